"""build_dense and build_conv: the networks of the classic experiments from one call.

Both check every option before any layer exists, then lay the blocks out flat in a plain
Functional ``keras.Model`` with structured names (``block1_dense``, ``block1_bn``,
``block1_relu``, ..., ``logits``, ``predictions``), so ``model.summary()`` reads like the
paper, the diagnostics callbacks see every layer and `fold_batchnorm` can fold every BN.

Usage::

    model = keras_bn.build_dense((784,), [32, 32], 10)          # the SEEDS §5 reference MLP
    cnn = keras_bn.build_conv((28, 28, 1), [32, 64], 10, norm="group")
"""

from __future__ import annotations

import math

import keras

from keras_bn._validation import check_choice, check_image_input, check_int_list, check_positive_int, check_shape
from keras_bn.block_options import BlockOptions
from keras_bn.layers import DATA_FORMATS, PADDINGS, block_layers

__all__ = ["HEADS", "MAX_PARAMETERS", "OUTPUT_ACTIVATIONS", "POOLINGS", "build_conv", "build_dense"]

OUTPUT_ACTIVATIONS = ("softmax", "sigmoid", None)
POOLINGS = ("max", "avg", None)
HEADS = ("avg", "max", "flatten")
# Builders refuse nets above this many parameters (4 GB of float32 weights, more with Adam's
# two slots) before any layer exists, instead of a TensorFlow out-of-memory naming no argument.
MAX_PARAMETERS = 10**9


def check_common(num_classes, output_activation, options: BlockOptions, channels) -> int:
    """Check the head options and every block width against `options`; return `num_classes` as int."""
    num_classes = check_positive_int("num_classes", num_classes)
    check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
    if num_classes == 1 and output_activation == "softmax":
        raise ValueError(
            "`num_classes` must be >= 2 with output_activation='softmax' (a softmax over one "
            "output is always 1); use output_activation='sigmoid' for one output. "
            "Received: num_classes=1"
        )
    for width in channels:
        options.check_channels(width * options.width_multiplier)
    return num_classes


def check_parameter_count(estimate: int, argument: str, value) -> None:
    """Refuse a net whose estimated parameter count exceeds `MAX_PARAMETERS`."""
    if estimate > MAX_PARAMETERS:
        raise ValueError(
            f"`{argument}` makes a net of about {estimate:,} parameters, above keras-bn's limit of "
            f"{MAX_PARAMETERS:,} (keras_bn.builders.MAX_PARAMETERS; {MAX_PARAMETERS * 4 / 2**30:.0f} GiB "
            f"of float32 weights before optimizer slots). Use smaller widths, or build such a net by "
            f"hand. Received: {argument}={value!r}"
        )


def output_head(x, num_classes: int, output_activation: str | None, initializer="glorot_uniform"):
    """The `logits` Dense layer and, unless `output_activation` is None, a float32 `predictions` activation."""
    x = keras.layers.Dense(num_classes, kernel_initializer=initializer, name="logits")(x)
    if output_activation is not None:
        # float32 so that mixed-precision models keep a float32 softmax, as Keras recommends.
        x = keras.layers.Activation(output_activation, dtype="float32", name="predictions")(x)
    return x


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def build_dense(
    input_shape,
    units,
    num_classes: int,
    *,
    activation="relu",
    norm="batch",
    norm_position: str = "before",
    initializer="auto",
    bias_initializer="zeros",
    dropout: float = 0.0,
    norm_kwargs: dict | None = None,
    act_kwargs: dict | None = None,
    use_bias: bool | None = None,
    output_activation: str | None = "softmax",
    name: str = "dense_net",
) -> keras.Model:
    """A multilayer perceptron: one `DenseBlock` per entry of `units`, then the classifier.

    ``build_dense((784,), [32, 32], 10)`` is the reference MLP of SEEDS §5: Dense -> BN ->
    ReLU twice, then Dense(10) (``logits``) and a float32 softmax (``predictions``; pass
    ``output_activation=None`` for logits only). Inputs of rank > 1 are flattened first.

    Args:
        input_shape: shape of one sample, e.g. ``(784,)`` or ``(28, 28)``.
        units: hidden widths, e.g. ``[100, 100, 100]``.
        num_classes: outputs of the last Dense layer.
        activation, norm, norm_position, initializer, bias_initializer, dropout, norm_kwargs,
            act_kwargs, use_bias: as `keras_bn.DenseBlock`, for every hidden block.
        output_activation: "softmax", "sigmoid" or None (logits).
        name: the model's name.

    Returns:
        An uncompiled ``keras.Model``.

    Example::

        model = keras_bn.build_dense((784,), [100] * 3, 10, activation="sigmoid", initializer=0.01)
    """
    input_shape = check_shape("input_shape", input_shape, ranks=(1, 2, 3))
    units = check_int_list("units", units)
    options = BlockOptions(
        activation=activation, norm=norm, norm_position=norm_position, initializer=initializer,
        bias_initializer=bias_initializer, dropout=dropout, norm_kwargs=norm_kwargs,
        act_kwargs=act_kwargs, use_bias=use_bias,
    )
    num_classes = check_common(num_classes, output_activation, options, units)
    widths = [math.prod(input_shape)] + units
    check_parameter_count(
        sum(a * b * options.width_multiplier for a, b in zip(widths, widths[1:])) + widths[-1] * num_classes,
        "units", units)

    inputs = keras.Input(shape=input_shape, name="inputs")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for i, width in enumerate(units, start=1):
        x = _apply(block_layers(width, options, name=f"block{i}"), x)
    outputs = output_head(x, num_classes, output_activation)
    return keras.Model(inputs, outputs, name=name)


def build_conv(
    input_shape,
    filters,
    num_classes: int,
    *,
    kernel_size: int = 3,
    strides: int = 1,
    padding: str = "same",
    pooling: str | None = "max",
    head: str = "avg",
    dense_units=(),
    activation="relu",
    norm="batch",
    norm_position: str = "before",
    initializer="auto",
    bias_initializer="zeros",
    dropout: float = 0.0,
    norm_kwargs: dict | None = None,
    act_kwargs: dict | None = None,
    use_bias: bool | None = None,
    data_format: str = "channels_last",
    output_activation: str | None = "softmax",
    name: str = "conv_net",
) -> keras.Model:
    """A small image classifier: one `ConvBlock` per entry of `filters`, each followed by
    2x2 `pooling`, then a `head` (global "avg"/"max" pooling or "flatten"), `dense_units`
    DenseBlocks and the classifier.

    BatchNorm on conv features normalizes each channel over N, H and W (SEEDS §5).
    A 2-D `input_shape` (H, W) gets a channel axis added.

    Raises ValueError before any layer is made when a kernel is larger than the feature map
    it meets, or pooling would shrink a map below 1x1.

    Example::

        cnn = keras_bn.build_conv((28, 28, 1), [32, 64], 10, dense_units=[128], dropout=0.25)
    """
    input_shape, in_channels, reshaped = check_image_input(input_shape, data_format, DATA_FORMATS)
    filters = check_int_list("filters", filters)
    dense_units = check_int_list("dense_units", dense_units, allow_empty=True)
    kernel_size = check_positive_int("kernel_size", kernel_size)
    strides = check_positive_int("strides", strides)
    check_choice("padding", padding, PADDINGS)
    check_choice("pooling", pooling, POOLINGS)
    check_choice("head", head, HEADS)
    options = BlockOptions(
        activation=activation, norm=norm, norm_position=norm_position, initializer=initializer,
        bias_initializer=bias_initializer, dropout=dropout, norm_kwargs=norm_kwargs,
        act_kwargs=act_kwargs, use_bias=use_bias,
    )
    num_classes = check_common(num_classes, output_activation, options, filters + dense_units)
    widths = [in_channels] + filters
    estimate = sum(kernel_size**2 * a * b * options.width_multiplier for a, b in zip(widths, widths[1:]))
    dense = [filters[-1]] + dense_units  # with the avg/max head; flatten is bounded by the map size below
    estimate += sum(a * b * options.width_multiplier for a, b in zip(dense, dense[1:])) + dense[-1] * num_classes
    check_parameter_count(estimate, "filters", filters)

    if len(input_shape) == 2:
        spatial = list(input_shape)
    else:
        spatial = list(input_shape[1:] if data_format == "channels_first" else input_shape[:2])
    for i in range(1, len(filters) + 1):
        if kernel_size > min(spatial):
            raise ValueError(
                f"`kernel_size` ({kernel_size}) is larger than the {spatial[0]}x{spatial[1]} "
                f"feature map that block{i} receives; use a smaller kernel, fewer blocks or "
                f"pooling=None. Received: kernel_size={kernel_size}, input_shape={tuple(input_shape)}"
            )
        size = [(s - kernel_size) // strides + 1 if padding == "valid" else -(-s // strides) for s in spatial]
        if pooling is not None:
            size = [s // 2 for s in size]
        if min(size) < 1:
            raise ValueError(
                f"block{i} would shrink the feature map below 1x1 (from {spatial[0]}x{spatial[1]}); "
                f"use fewer `filters` entries, strides=1 or pooling=None. "
                f"Received: filters={filters}, input_shape={tuple(input_shape)}"
            )
        spatial = size

    inputs = keras.Input(shape=input_shape, name="inputs")
    x = keras.layers.Reshape(reshaped, name="add_channel")(inputs) if reshaped else inputs
    pool_cls = {"max": keras.layers.MaxPooling2D, "avg": keras.layers.AveragePooling2D}
    for i, width in enumerate(filters, start=1):
        x = _apply(
            block_layers(width, options, name=f"block{i}", rank=2, kernel_size=kernel_size, strides=strides,
                         padding=padding, data_format=data_format),
            x,
        )
        if pooling is not None:
            x = pool_cls[pooling](2, data_format=data_format, name=f"block{i}_pool")(x)
    if head == "flatten":
        x = keras.layers.Flatten(data_format=data_format, name="flatten")(x)
    else:
        global_cls = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}[head]
        x = global_cls(data_format=data_format, name=f"global_{head}_pool")(x)
    offset = len(filters)
    for j, width in enumerate(dense_units, start=offset + 1):
        x = _apply(block_layers(width, options, name=f"block{j}"), x)
    outputs = output_head(x, num_classes, output_activation)
    return keras.Model(inputs, outputs, name=name)
