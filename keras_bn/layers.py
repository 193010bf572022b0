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

from keras_bn._backend import warn_if_channels_first_cannot_run
from keras_bn._validation import check_choice, check_positive_int
from keras_bn.activations import resolve_activation
from keras_bn.block_options import NORM_POSITIONS, BlockOptions  # noqa: F401  (NORM_POSITIONS: re-export)

__all__ = ["DATA_FORMATS", "PADDINGS", "ConvBlock", "DenseBlock", "block_layers"]

PADDINGS = ("same", "valid")
DATA_FORMATS = ("channels_last", "channels_first")


def block_layers(
    units: int,
    options: BlockOptions,
    *,
    name: str,
    rank: int = 0,
    kernel_size=3,
    strides=1,
    padding: str = "same",
    data_format: str = "channels_last",
) -> list[keras.layers.Layer]:
    """The layers of one block, in order: linear, norm/act (per `norm_position`), dropout.

    `rank` 0 makes a Dense block; 1, 2 or 3 a ConvND block. Names are ``{name}_dense`` /
    ``{name}_conv``, ``{name}_bn|ln|gn|syncbn``, ``{name}_{activation}``, ``{name}_dropout``.
    """
    units = check_positive_int("units" if rank == 0 else "filters", units)
    linear_units = units * options.width_multiplier
    options.check_channels(linear_units if options.norm_position == "before" else units)
    channel_axis = 1 if (rank > 0 and data_format == "channels_first") else -1
    linear_kwargs = {
        "use_bias": options.use_linear_bias,
        "kernel_initializer": options.kernel_initializer(),
        "bias_initializer": options.bias_initializer_object(),
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
    norm_channels = linear_units if options.norm_position == "before" else units
    norm_layer = options.make_norm(norm_channels, f"{name}_{options.norm_spec.suffix}", channel_axis=channel_axis)
    act_layer = options.make_activation(f"{name}_{options.activation_name}", channel_axis=channel_axis, rank=rank)
    pair = [norm_layer, act_layer] if options.norm_position == "before" else [act_layer, norm_layer]
    layers = [linear] + [layer for layer in pair if layer is not None]
    if options.dropout > 0:
        selu = resolve_activation(options.activation) == "selu"
        dropout_cls = keras.layers.AlphaDropout if selu else keras.layers.Dropout
        layers.append(dropout_cls(options.dropout, name=f"{name}_dropout"))
    return layers


class _Block(keras.layers.Layer):
    """A sequence of `block_layers` as one Keras layer; the options are a `BlockOptions`."""

    _rank = 0

    def __init__(self, units, *, options: BlockOptions | None = None, **kwargs):
        given, layer_kwargs = BlockOptions.split(kwargs)
        if options is not None and given:
            raise ValueError("Pass block options either as `options` or as keyword arguments, not both. "
                             f"Received: options={options!r}, {given!r}")
        if options is not None and not isinstance(options, BlockOptions):
            raise TypeError(f"`options` must be a keras_bn BlockOptions or None. Received: options={options!r}")
        options = options or BlockOptions(**given)
        super().__init__(**layer_kwargs)
        self.units = units
        self.options = options
        self.sublayers = block_layers(units, self.options, name=self.name, rank=self._rank, **self._shape_kwargs())

    @property
    def activation(self):
        """The block's activation, as given (a name or a callable), like a Keras layer's."""
        return self.options.activation

    def _shape_kwargs(self) -> dict:
        return {}

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
        return {**super().get_config(), **self.options.config(), **self._shape_kwargs()}

    @classmethod
    def from_config(cls, config):
        _, rest = BlockOptions.split(config)
        return cls(options=BlockOptions.from_config(config), **rest)


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
        options: all of the above as one `keras_bn.block_options.BlockOptions` (then pass
            none of them as keywords).

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
        warn_if_channels_first_cannot_run(self.data_format)
        if isinstance(rank, bool):  # True == 1 would pass the choice check below
            raise TypeError(f"`rank` must be 1, 2 or 3 (spatial axes). Received: rank={rank!r}")
        self._rank = check_choice("rank", rank, (1, 2, 3))
        super().__init__(filters, **kwargs)

    def _shape_kwargs(self) -> dict:
        return {
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
