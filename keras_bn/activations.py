"""Activation registry: every activation of the classic comparison as a Keras layer.

Each entry knows its family (used by the diagnostics: dead units for the ReLU family,
saturation for sigmoid/tanh) and its default initializer (``initializer="auto"``):
He for the ReLU family, Glorot for sigmoid/tanh, LeCun normal for SELU (SEEDS §2, §4).
Anything else Keras knows by name, or any callable, is accepted too.

Usage::

    layer = make_activation("leaky_relu", name="block1_leaky_relu", act_kwargs={"negative_slope": 0.1})
    default_initializer("selu")  # -> "lecun_normal"
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from keras_bn._registry import Registry
from keras_bn._validation import check_positive_int


@keras.saving.register_keras_serializable(package="keras_bn")
class Maxout(keras.layers.Layer):
    """Maxout: the max over `num_pieces` linear pieces (Goodfellow et al., 2013).

    The preceding linear layer produces ``units * num_pieces`` features; Maxout splits the
    `axis` into groups of `num_pieces` consecutive features and keeps each group's maximum,
    so the output has ``units`` features. Twice the parameters of a ReLU layer at k=2.

    Args:
        num_pieces: how many linear pieces each output unit takes the max over (k >= 2).
        axis: the feature axis (-1 for channels-last, 1 for channels-first).

    Example::

        x = keras.layers.Dense(64 * 2)(inputs)
        y = keras_bn.Maxout(num_pieces=2)(x)  # 64 features
    """

    def __init__(self, num_pieces: int = 2, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.num_pieces = check_positive_int("num_pieces", num_pieces)
        if self.num_pieces < 2:
            raise ValueError(f"`num_pieces` must be >= 2. Received: num_pieces={num_pieces!r}")
        from keras_bn._validation import check_int  # local: this module's imports belong to its owner

        self.axis = check_int("axis", axis)

    def _axis(self, rank: int) -> int:
        return self.axis % rank

    def build(self, input_shape):
        axis = self._axis(len(input_shape))
        channels = input_shape[axis]
        if channels is not None and channels % self.num_pieces:
            raise ValueError(
                f"Maxout needs the feature axis to be a multiple of `num_pieces`; "
                f"{channels} features do not split into groups of {self.num_pieces}. "
                f"Received: num_pieces={self.num_pieces}"
            )
        super().build(input_shape)

    def call(self, inputs):
        rank = len(inputs.shape)
        axis = self._axis(rank)
        x = keras.ops.moveaxis(inputs, axis, -1) if axis != rank - 1 else inputs
        channels = x.shape[-1]
        pieces = keras.ops.reshape(
            x, tuple(keras.ops.shape(x)[:-1]) + (channels // self.num_pieces, self.num_pieces)
        )
        out = keras.ops.max(pieces, axis=-1)
        return keras.ops.moveaxis(out, -1, axis) if axis != rank - 1 else out

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        axis = self._axis(len(shape))
        if shape[axis] is not None:
            shape[axis] //= self.num_pieces
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "num_pieces": self.num_pieces, "axis": self.axis}


@dataclass(frozen=True)
class ActivationSpec:
    """What keras-bn knows about one activation."""

    family: str  # "relu" (can die), "saturating" (can saturate), "self_normalizing", "smooth"
    default_initializer: str
    layer_kwargs: tuple[str, ...] = ()  # options that `act_kwargs` may set

    @property
    def is_relu_family(self) -> bool:
        return self.family == "relu"


ACTIVATIONS: Registry[ActivationSpec] = Registry(
    "activation",
    {
        "sigmoid": ActivationSpec("saturating", "glorot_uniform"),
        "tanh": ActivationSpec("saturating", "glorot_uniform"),
        "relu": ActivationSpec("relu", "he_normal"),
        "leaky_relu": ActivationSpec("relu", "he_normal", ("negative_slope",)),
        "prelu": ActivationSpec("relu", "he_normal", ("alpha_initializer", "shared_axes")),
        "elu": ActivationSpec("smooth", "he_normal"),
        "selu": ActivationSpec("self_normalizing", "lecun_normal"),
        "gelu": ActivationSpec("smooth", "he_normal"),
        "maxout": ActivationSpec("relu", "he_normal", ("num_pieces",)),
        "linear": ActivationSpec("smooth", "glorot_uniform"),
    },
    aliases={"leakyrelu": "leaky_relu", "lrelu": "leaky_relu", "identity": "linear"},
)

# Leaky ReLU's slope in the source notes (Keras' own default is 0.3).
LEAKY_RELU_SLOPE = 0.01


def resolve_activation(activation: object) -> str | object:
    """Canonical name for a registered activation, the Keras name or callable otherwise.

    Raises ValueError listing the choices for an unknown string, TypeError for other types.
    """
    if callable(activation) and not isinstance(activation, str):
        return activation
    if not isinstance(activation, str):
        raise TypeError(
            "`activation` must be a name or a callable. "
            f"Received: activation={activation!r}"
        )
    name = ACTIVATIONS.lookup(activation)
    if name is not None:
        return name
    try:
        keras.activations.get(activation)
    except ValueError:
        raise ValueError(
            ACTIVATIONS.unknown_message(activation, extra=", or any name of keras.activations")
        ) from None
    return activation


def activation_name(activation: object) -> str:
    """A short name for layer names: ``"relu"``, ``"swish"``, or the callable's ``__name__``."""
    resolved = resolve_activation(activation)
    if isinstance(resolved, str):
        return resolved
    return getattr(resolved, "__name__", type(resolved).__name__).lower()


def default_initializer(activation: object) -> str:
    """The initializer ``"auto"`` picks for `activation` (He / Glorot / LeCun normal)."""
    resolved = resolve_activation(activation)
    if isinstance(resolved, str) and resolved in ACTIVATIONS:
        return ACTIVATIONS.get(resolved).default_initializer
    return "glorot_uniform"  # Keras' own default for anything else


def width_multiplier(activation: object, act_kwargs: dict | None = None) -> int:
    """How many linear outputs one unit of `activation` consumes (Maxout: num_pieces)."""
    if resolve_activation(activation) == "maxout":
        return int((act_kwargs or {}).get("num_pieces", 2))
    return 1


def check_act_kwargs(activation: object, act_kwargs: dict | None) -> dict:
    """Return `act_kwargs` as a dict, raising ValueError for an option `activation` lacks."""
    act_kwargs = dict(act_kwargs or {})
    resolved = resolve_activation(activation)
    allowed = ACTIVATIONS.get(resolved).layer_kwargs if resolved in ACTIVATIONS else ()
    for key in act_kwargs:
        if key not in allowed:
            listed = ", ".join(repr(a) for a in allowed) or "none"
            raise ValueError(
                f"`act_kwargs` has an option that activation {activation!r} does not take: "
                f"{key!r}. Allowed: {listed}. Received: act_kwargs={act_kwargs!r}"
            )
    if resolved == "maxout":
        pieces = check_positive_int("num_pieces", act_kwargs.get("num_pieces", 2))
        if pieces < 2:
            raise ValueError(f"`num_pieces` must be >= 2. Received: num_pieces={pieces!r}")
    if resolved == "leaky_relu" and "negative_slope" in act_kwargs:
        slope = act_kwargs["negative_slope"]
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or slope < 0:
            raise ValueError(
                f"`negative_slope` must be a number >= 0. Received: negative_slope={slope!r}"
            )
    return act_kwargs


def make_activation(
    activation: object,
    *,
    name: str | None = None,
    act_kwargs: dict | None = None,
    channel_axis: int = -1,
    rank: int = 1,
    dtype=None,
) -> keras.layers.Layer:
    """Build the Keras layer for `activation`.

    `rank` is the number of spatial axes (0 for dense features); PReLU then shares its slope
    over the spatial axes, one slope per channel.
    """
    resolved = resolve_activation(activation)
    act_kwargs = check_act_kwargs(activation, act_kwargs)
    common = {"name": name, "dtype": dtype}
    if resolved == "leaky_relu":
        return keras.layers.LeakyReLU(
            negative_slope=act_kwargs.get("negative_slope", LEAKY_RELU_SLOPE), **common
        )
    if resolved == "prelu":
        if "shared_axes" not in act_kwargs and rank > 0:
            channel = channel_axis % (rank + 1) + 1  # axes counted with the batch axis
            act_kwargs["shared_axes"] = [a for a in range(1, rank + 2) if a != channel]
        act_kwargs.setdefault("alpha_initializer", keras.initializers.Constant(0.25))
        return keras.layers.PReLU(**act_kwargs, **common)
    if resolved == "maxout":
        return Maxout(num_pieces=act_kwargs.get("num_pieces", 2), axis=channel_axis, **common)
    return keras.layers.Activation(resolved, **common)


def activation_family(layer: keras.layers.Layer) -> str | None:
    """The family of what `layer` outputs: "relu", "tanh", "sigmoid" or None.

    Recognises keras-bn's and Keras' own activation layers and layers with a fused
    ``activation`` (``Dense(..., activation="relu")``), so diagnostics work on any model.
    """
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU, Maxout)):
        return "relu"
    fn = getattr(layer, "activation", None)
    if fn is None:
        return None
    name = getattr(fn, "__name__", "")
    if name in ("relu", "relu6", "leaky_relu"):
        return "relu"
    if name in ("tanh", "sigmoid", "hard_sigmoid", "hard_tanh"):
        return "sigmoid" if "sigmoid" in name else "tanh"
    return None
