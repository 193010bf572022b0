"""BlockOptions: the options every block takes, validated once and frozen.

The builders (`build_dense`, `build_conv`, `build_resnet`), the blocks (`DenseBlock`,
`ConvBlock`) and their ``get_config`` all hold one `BlockOptions` instead of threading the
nine arguments by hand. Constructing one checks every option (errors name the argument, as
everywhere in keras-bn); `replace` makes a checked variant.

Usage::

    options = BlockOptions(activation="tanh", norm="BN", dropout=0.1)
    options.norm, options.use_linear_bias   # ('batch', False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

import keras

from keras_bn._validation import check_choice, check_float
from keras_bn.activations import activation_name, check_act_kwargs, make_activation, resolve_activation, width_multiplier
from keras_bn.initializers import check_bias_initializer, check_initializer, get_bias_initializer, get_initializer
from keras_bn.norms import NORMS, NormSpec, check_norm_kwargs, make_norm, resolve_norm

__all__ = ["NORM_POSITIONS", "BlockOptions"]

NORM_POSITIONS = ("before", "after")


def _check_mapping(name: str, value: object) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"`{name}` must be a dict or None. Received: {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """The options of one block (see `keras_bn.DenseBlock` for what each does).

    After construction `norm` is the canonical name (``"none"`` for None), `dropout` a
    float, `norm_kwargs`/`act_kwargs` read-only mappings; `activation`, the initializers and
    `use_bias` are kept as given (None = auto, see `use_linear_bias`).
    """

    activation: object = "relu"
    norm: object = "batch"
    norm_position: str = "before"
    initializer: object = "auto"
    bias_initializer: object = "zeros"
    dropout: float = 0.0
    norm_kwargs: Mapping | None = None
    act_kwargs: Mapping | None = None
    use_bias: bool | None = None

    def __post_init__(self):
        set_ = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731  (frozen)
        norm = resolve_norm(self.norm)
        check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        resolve_activation(self.activation)
        check_initializer(self.initializer, "initializer")
        check_bias_initializer(self.bias_initializer)
        dropout = check_float("dropout", self.dropout, low=0.0, high=1.0, high_inclusive=False)
        _check_mapping("norm_kwargs", self.norm_kwargs)
        _check_mapping("act_kwargs", self.act_kwargs)
        norm_kwargs = check_norm_kwargs(norm, self.norm_kwargs)
        act_kwargs = check_act_kwargs(self.activation, self.act_kwargs)
        if "negative_slope" in act_kwargs:  # NaN or inf would build a net that outputs NaN
            check_float("negative_slope", act_kwargs["negative_slope"], low=0.0)
        if self.use_bias is not None and not isinstance(self.use_bias, bool):
            raise TypeError(f"`use_bias` must be True, False or None (auto). Received: use_bias={self.use_bias!r}")
        set_("norm", norm)
        set_("dropout", dropout)
        set_("norm_kwargs", MappingProxyType(norm_kwargs))
        set_("act_kwargs", MappingProxyType(act_kwargs))

    def replace(self, **changes) -> BlockOptions:
        """A checked copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    # --- derived values -------------------------------------------------------------------
    @property
    def norm_spec(self) -> NormSpec:
        return NORMS.get(self.norm)

    @property
    def activation_name(self) -> str:
        """The activation's part of layer names (``relu``, ``leaky_relu``...)."""
        return activation_name(self.activation)

    @property
    def width_multiplier(self) -> int:
        """Linear outputs per unit (Maxout: `num_pieces`, else 1)."""
        return width_multiplier(self.activation, self.act_kwargs)

    @property
    def use_linear_bias(self) -> bool:
        """`use_bias`, with None resolved: no bias when a bias-absorbing norm directly follows."""
        if self.use_bias is not None:
            return self.use_bias
        return not (self.norm_spec.absorbs_bias and self.norm_position == "before")

    def check_channels(self, channels: int) -> None:
        """Raise if the norm options do not fit a block of `channels` (group count)."""
        check_norm_kwargs(self.norm, dict(self.norm_kwargs), channels)

    # --- layers ---------------------------------------------------------------------------
    def kernel_initializer(self):
        return get_initializer(self.initializer, activation=self.activation)

    def bias_initializer_object(self):
        return get_bias_initializer(self.bias_initializer)

    def make_norm(self, channels: int, name: str, *, channel_axis: int = -1, gamma_initializer=None):
        """The norm layer (None for ``"none"``)."""
        return make_norm(self.norm, channels=channels, name=name, channel_axis=channel_axis,
                         norm_kwargs=dict(self.norm_kwargs), gamma_initializer=gamma_initializer)

    def make_activation(self, name: str, *, channel_axis: int = -1, rank: int = 0):
        return make_activation(self.activation, name=name, act_kwargs=dict(self.act_kwargs),
                               channel_axis=channel_axis, rank=rank)

    # --- serialization --------------------------------------------------------------------
    def config(self) -> dict:
        """The options as a JSON-friendly dict (what a block's ``get_config`` stores)."""
        config = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        config["norm_kwargs"] = dict(self.norm_kwargs) or None
        config["act_kwargs"] = dict(self.act_kwargs) or None
        for key in ("initializer", "bias_initializer"):
            if not isinstance(config[key], (str, int, float, type(None))):
                config[key] = keras.saving.serialize_keras_object(config[key])
        if callable(config["activation"]) and not isinstance(config["activation"], str):
            config["activation"] = keras.saving.serialize_keras_object(config["activation"])
        return config

    @classmethod
    def from_config(cls, config: Mapping) -> BlockOptions:
        """The inverse of `config` (extra keys are ignored)."""
        kwargs = {field.name: config[field.name] for field in dataclasses.fields(cls) if field.name in config}
        for key in ("initializer", "bias_initializer", "activation"):
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = keras.saving.deserialize_keras_object(kwargs[key])
        return cls(**kwargs)

    @classmethod
    def split(cls, kwargs: Mapping) -> tuple[dict, dict]:
        """(the BlockOptions keys of `kwargs`, the other keys), as two dicts."""
        names = {field.name for field in dataclasses.fields(cls)}
        return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}
