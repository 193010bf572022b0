"""DenseBlock and ConvBlock: linear -> norm -> activation (or linear -> activation -> norm).

`block_layers` makes the plain Keras layers of one block; the builders lay them out flat in
a Functional model (so every layer shows in ``model.layers`` and folds for inference), and
`DenseBlock` / `ConvBlock` wrap the same layers as one serializable layer for use in your
own models.

**The linear layer has no bias when batch, sync-batch or group norm directly follows it**
(``norm_position="before"``): the norm subtracts the per-channel mean, and its own beta takes
the bias's place. Pass ``use_bias=True`` to keep it anyway.

Usage::

    x = keras_bn.DenseBlock(256, activation="tanh", norm="batch")(inputs)
    x = keras_bn.ConvBlock(32, kernel_size=3, norm="group", activation="relu")(images)
"""

from __future__ import annotations

import keras

from keras_bn._validation import check_choice, check_float, check_int_list, check_positive_int
from keras_bn.activations import activation_name, check_act_kwargs, make_activation, resolve_activation, width_multiplier
from keras_bn.initializers import check_bias_initializer, check_initializer, get_bias_initializer, get_initializer
from keras_bn.norms import BIAS_ABSORBING_NORMS, check_norm_kwargs, make_norm, norm_suffix, resolve_norm

NORM_POSITIONS = ("before", "after")
PADDINGS = ("same", "valid")
DATA_FORMATS = ("channels_last", "channels_first")


def check_block_options(
    *,
    activation,
    norm,
    norm_position,
    initializer,
    bias_initializer,
    dropout,
    norm_kwargs,
    act_kwargs,
    use_bias,
    channels: int | None = None,
) -> dict:
    """Validate the options shared by every block; return them resolved."""
    resolved_norm = resolve_norm(norm)
    check_choice("norm_position", norm_position, NORM_POSITIONS)
    resolve_activation(activation)
    check_initializer(initializer, "initializer")
    check_bias_initializer(bias_initializer)
    dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
    if norm_kwargs is not None and not isinstance(norm_kwargs, dict):
        raise TypeError(f"`norm_kwargs` must be a dict or None. Received: norm_kwargs={norm_kwargs!r}")
    if act_kwargs is not None and not isinstance(act_kwargs, dict):
        raise TypeError(f"`act_kwargs` must be a dict or None. Received: act_kwargs={act_kwargs!r}")
    norm_kwargs = check_norm_kwargs(resolved_norm, norm_kwargs, channels)
    act_kwargs = check_act_kwargs(activation, act_kwargs)
    if use_bias is not None and not isinstance(use_bias, bool):
        raise TypeError(f"`use_bias` must be True, False or None (auto). Received: use_bias={use_bias!r}")
    if use_bias is None:
        use_bias = not (resolved_norm in BIAS_ABSORBING_NORMS and norm_position == "before")
    return {
        "norm": resolved_norm,
        "dropout": dropout,
        "norm_kwargs": norm_kwargs,
        "act_kwargs": act_kwargs,
        "use_bias": use_bias,
    }


def block_layers(
    units: int,
    *,
    name: str,
    rank: int = 0,
    kernel_size=3,
    strides=1,
    padding: str = "same",
    data_format: str = "channels_last",
    activation="relu",
    norm="batch",
    norm_position: str = "before",
    initializer="auto",
    bias_initializer="zeros",
    dropout: float = 0.0,
    norm_kwargs: dict | None = None,
    act_kwargs: dict | None = None,
    use_bias: bool | None = None,
) -> list[keras.layers.Layer]:
    """The layers of one block, in order: linear, norm/act (per `norm_position`), dropout.

    `rank` 0 makes a Dense block; 1, 2 or 3 a ConvND block. Names are ``{name}_dense`` /
    ``{name}_conv``, ``{name}_bn|ln|gn|syncbn``, ``{name}_{activation}``, ``{name}_dropout``.
    """
    units = check_positive_int("units" if rank == 0 else "filters", units)
    opts = check_block_options(
        activation=activation,
        norm=norm,
        norm_position=norm_position,
        initializer=initializer,
        bias_initializer=bias_initializer,
        dropout=dropout,
        norm_kwargs=norm_kwargs,
        act_kwargs=act_kwargs,
        use_bias=use_bias,
        channels=units * width_multiplier(activation, act_kwargs),
    )
    channel_axis = 1 if (rank > 0 and data_format == "channels_first") else -1
    linear_units = units * width_multiplier(activation, opts["act_kwargs"])
    linear_kwargs = {
        "use_bias": opts["use_bias"],
        "kernel_initializer": get_initializer(initializer, activation=activation),
        "bias_initializer": get_bias_initializer(bias_initializer),
    }
    if rank == 0:
        linear = keras.layers.Dense(linear_units, name=f"{name}_dense", **linear_kwargs)
    else:
        conv_cls = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
        linear = conv_cls(
            linear_units,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            name=f"{name}_conv",
            **linear_kwargs,
        )
    norm_channels = linear_units if norm_position == "before" else units
    norm_layer = make_norm(
        opts["norm"],
        channels=norm_channels,
        name=f"{name}_{norm_suffix(opts['norm'])}",
        channel_axis=channel_axis,
        norm_kwargs=opts["norm_kwargs"],
    )
    act_layer = make_activation(
        activation,
        name=f"{name}_{activation_name(activation)}",
        act_kwargs=opts["act_kwargs"],
        channel_axis=channel_axis,
        rank=rank,
    )
    pair = [norm_layer, act_layer] if norm_position == "before" else [act_layer, norm_layer]
    layers = [linear] + [layer for layer in pair if layer is not None]
    if opts["dropout"] > 0:
        dropout_cls = keras.layers.AlphaDropout if resolve_activation(activation) == "selu" else keras.layers.Dropout
        layers.append(dropout_cls(opts["dropout"], name=f"{name}_dropout"))
    return layers


class _Block(keras.layers.Layer):
    """A sequence of `block_layers` as one Keras layer."""

    _rank = 0

    def __init__(
        self,
        units,
        *,
        activation="relu",
        norm="batch",
        norm_position="before",
        initializer="auto",
        bias_initializer="zeros",
        dropout=0.0,
        norm_kwargs=None,
        act_kwargs=None,
        use_bias=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation
        self.norm = norm
        self.norm_position = norm_position
        self.initializer = initializer
        self.bias_initializer = bias_initializer
        self.dropout = dropout
        self.norm_kwargs = norm_kwargs
        self.act_kwargs = act_kwargs
        self.use_bias = use_bias
        self.sublayers = block_layers(units, name=self.name, rank=self._rank, **self._block_kwargs())

    def _block_kwargs(self) -> dict:
        return {
            "activation": self.activation,
            "norm": self.norm,
            "norm_position": self.norm_position,
            "initializer": self.initializer,
            "bias_initializer": self.bias_initializer,
            "dropout": self.dropout,
            "norm_kwargs": self.norm_kwargs,
            "act_kwargs": self.act_kwargs,
            "use_bias": self.use_bias,
        }

    def build(self, input_shape):
        shape = input_shape
        for layer in self.sublayers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.sublayers:
            x = layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for layer in self.sublayers:
            shape = layer.compute_output_shape(shape)
        return shape

    def get_config(self):
        config = {**super().get_config(), **self._block_kwargs()}
        for key in ("initializer", "bias_initializer"):
            if not isinstance(config[key], (str, int, float, type(None))):
                config[key] = keras.saving.serialize_keras_object(config[key])
        if callable(config["activation"]) and not isinstance(config["activation"], str):
            config["activation"] = keras.saving.serialize_keras_object(config["activation"])
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("initializer", "bias_initializer", "activation"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_bn")
class DenseBlock(_Block):
    """Dense -> norm -> activation (-> dropout) as one layer.

    Args:
        units: output features.
        activation: any name of `keras_bn.activations.ACTIVATIONS`, a Keras activation name
            or a callable.
        norm: None, "batch", "layer", "group" or "sync_batch".
        norm_position: "before" the activation (default, as in the BN paper) or "after".
        initializer: kernel initializer; "auto" picks He / Glorot / LeCun from the activation.
        bias_initializer: a name or a constant (e.g. 0.01 for ReLU units).
        dropout: dropout rate after the block (AlphaDropout with SELU).
        norm_kwargs: momentum, epsilon, groups... for the norm layer.
        act_kwargs: negative_slope (leaky_relu), num_pieces (maxout)...
        use_bias: None drops the bias when batch/group norm directly follows.

    Example::

        y = keras_bn.DenseBlock(64, activation="selu", norm=None)(x)
    """

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="keras_bn")
class ConvBlock(_Block):
    """ConvND -> norm -> activation (-> dropout) as one layer; arguments as `DenseBlock`.

    Extra args: `kernel_size`, `strides`, `padding`, `data_format` (as Keras Conv2D) and
    `rank` (1, 2 or 3 spatial axes; 2 by default).

    Example::

        y = keras_bn.ConvBlock(32, kernel_size=3, norm="group", norm_kwargs={"groups": 8})(images)
    """

    def __init__(self, filters, kernel_size=3, strides=1, padding="same", data_format="channels_last", rank=2, **kwargs):
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = check_choice("padding", padding, PADDINGS)
        self.data_format = check_choice("data_format", data_format, DATA_FORMATS)
        self._rank = check_choice("rank", rank, (1, 2, 3))
        super().__init__(filters, **kwargs)

    def _block_kwargs(self) -> dict:
        return {
            **super()._block_kwargs(),
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
        }

    def get_config(self):
        config = super().get_config()
        return {**config, "filters": self.filters, "rank": self._rank}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("units", None)
        return super().from_config(config)
