"""build_resnet: the CIFAR ResNet family (He et al. 2015, §4.2) and its plain twin, any norm.

``depth = 6n + 2`` (basic blocks) or ``9n + 2`` (bottleneck): a 3x3 stem conv, one stage of
`n` blocks per entry of `widths` (16/32/64 by default, stride-2 downsampling at the first
block of each later stage), global average pooling and the classifier. Layer names are
structured: ``stem_conv``, ``stage1_block1_conv1``, ``stage1_block1_bn1``,
``stage1_block1_relu1``, ..., ``stage1_block1_add``, ``stage1_block1_out_relu``,
``global_avg_pool``, ``logits``, ``predictions``.

- ``residual=False``: the plain twin, the same layers without the shortcuts. With the default
  ``shortcut="identity"`` (option A: `ZeroPadShortcut`, no parameters) both twins have the
  same parameter count; ``shortcut="projection"`` (option B) adds a 1x1 conv (+ norm) where
  the shape changes.
- ``preactivation=True``: the v2 ordering (He et al. 2016): norm -> act -> conv in every
  branch, nothing after the sum, a final norm -> act before the pooling.
- ``zero_init_residual=True``: every residual branch starts as zero (Goyal et al. 2017): the
  last norm's gamma in post-activation blocks; in pre-activation blocks (or without a norm)
  the branch's last conv kernel (and bias).
- ``fixup=True`` (``norm=None`` only; Zhang et al. 2019): the last conv of each branch and the
  classifier start at zero, the other branch convs are scaled by ``L ** (-1 / (2m - 2))``
  (`L` branches of `m` convs), and scalar biases (`ScalarBias`) sit before each conv and
  activation, a scalar multiplier (`ScalarScale`) after each branch.

Usage::

    model = keras_bn.build_resnet((28, 28, 1), 20, 10)                   # ResNet-20 with BN
    plain = keras_bn.build_resnet((28, 28, 1), 20, 10, residual=False)   # its plain twin
    fixup = keras_bn.build_resnet((28, 28, 1), 56, 10, norm=None, fixup=True)
"""

from __future__ import annotations

import keras

from keras_bn._validation import check_choice, check_image_input, check_int_list
from keras_bn.activations import resolve_activation
from keras_bn.block_options import BlockOptions
from keras_bn.builders import output_head, check_common, check_parameter_count
from keras_bn.initializers import Scaled
from keras_bn.layers import DATA_FORMATS
from keras_bn.residual_layers import ScalarBias, ScalarScale, ZeroPadShortcut

__all__ = ["build_resnet", "fixup_scale"]

SHORTCUTS = ("identity", "projection")
BOTTLENECK_EXPANSION = 4


def fixup_scale(num_branches: int, branch_layers: int) -> float:
    """Fixup's factor ``L ** (-1 / (2m - 2))`` for the non-final convs of each branch."""
    return float(num_branches) ** (-1.0 / (2 * branch_layers - 2))


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value


def _blocks_per_stage(depth, blocks_per_stage, stages: int, bottleneck: bool) -> list[int]:
    per_block = 3 if bottleneck else 2
    if blocks_per_stage is not None:
        if depth is not None:
            raise ValueError(
                "Pass either `depth` or `blocks_per_stage`, not both. "
                f"Received: depth={depth!r}, blocks_per_stage={blocks_per_stage!r}"
            )
        blocks = check_int_list("blocks_per_stage", blocks_per_stage)
        if len(blocks) == 1:
            blocks = blocks * stages
        if len(blocks) != stages:
            raise ValueError(
                f"`blocks_per_stage` must have one entry per stage ({stages}, from `widths`) or "
                f"be one integer. Received: blocks_per_stage={blocks_per_stage!r}"
            )
        return blocks
    if depth is None:
        raise ValueError("`depth` must be given (e.g. 20) unless `blocks_per_stage` is. Received: depth=None")
    step = per_block * stages
    kind = "bottleneck" if bottleneck else "basic"
    ok = isinstance(depth, int) and not isinstance(depth, bool) and depth > 2 and (depth - 2) % step == 0
    if not ok:
        raise ValueError(
            f"`depth` must be {step}n + 2 for {stages} stages of {kind} blocks ({per_block} convs "
            f"each), e.g. {step + 2}, {3 * step + 2} or {9 * step + 2}; or pass `blocks_per_stage`. "
            f"Received: depth={depth!r}"
        )
    return [(depth - 2) // step] * stages


class _Layers:
    """Makes the layers of one network from its `BlockOptions`."""

    def __init__(self, options: BlockOptions, *, use_bias: bool, data_format: str, fixup_factor: float):
        self.options = options
        self.act = options.activation_name
        self.norm = options.norm
        self.norm_tag = options.norm_spec.suffix
        self.dropout = options.dropout
        self.use_bias = use_bias
        self.data_format = data_format
        self.channel_axis = 1 if data_format == "channels_first" else -1
        self.fixup_factor = fixup_factor

    def conv(self, filters, kernel_size, name, *, strides=1, zero=False, scaled=False):
        kernel_init = self.options.kernel_initializer()
        if scaled:
            kernel_init = Scaled(kernel_init, self.fixup_factor)
        return keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", data_format=self.data_format,
            use_bias=self.use_bias, name=name,
            kernel_initializer="zeros" if zero else kernel_init,
            bias_initializer="zeros" if zero else self.options.bias_initializer_object(),
        )

    def norm_layer(self, channels, name, *, zero_gamma=False):
        """The norm layer called `name` (None for norm "none")."""
        return self.options.make_norm(channels, name, channel_axis=self.channel_axis,
                                      gamma_initializer="zeros" if zero_gamma else None)

    def act_layer(self, name):
        return self.options.make_activation(name, channel_axis=self.channel_axis, rank=2)


def _apply(layer, x):
    return x if layer is None else layer(x)


def _branch(make: _Layers, x, block: str, filters: int, strides: int, *, bottleneck, preactivation,
            zero_init, fixup):
    """The residual branch of one block; returns (branch output, its pre-activated input)."""
    if bottleneck:
        convs = [(filters, 1, 1), (filters, 3, strides), (filters * BOTTLENECK_EXPANSION, 1, 1)]
    else:
        convs = [(filters, 3, strides), (filters, 3, 1)]
    last = len(convs)
    preact = None
    for i, (width, kernel, stride) in enumerate(convs, start=1):
        is_last = i == last
        if preactivation:
            x = _apply(make.norm_layer(x.shape[make.channel_axis], f"{block}_{make.norm_tag}{i}"), x)
            x = make.act_layer(f"{block}_{make.act}{i}")(x)
            preact = x if i == 1 else preact
            if is_last and make.dropout > 0:
                x = keras.layers.Dropout(make.dropout, name=f"{block}_dropout")(x)
        if fixup:
            x = ScalarBias(name=f"{block}_bias{i}a")(x)
        zero_kernel = is_last and (fixup or (zero_init and (preactivation or make.norm == "none")))
        x = make.conv(width, kernel, f"{block}_conv{i}", strides=stride, zero=zero_kernel,
                      scaled=fixup and not is_last)(x)
        if preactivation:
            continue
        x = _apply(make.norm_layer(width, f"{block}_{make.norm_tag}{i}", zero_gamma=is_last and zero_init), x)
        if fixup and is_last:
            x = ScalarScale(name=f"{block}_scale")(x)
        if fixup:
            x = ScalarBias(name=f"{block}_bias{i}b")(x)
        if not is_last:
            x = make.act_layer(f"{block}_{make.act}{i}")(x)
            if i == last - 1 and make.dropout > 0:
                x = keras.layers.Dropout(make.dropout, name=f"{block}_dropout")(x)
    return x, preact


def _shortcut(make: _Layers, x, preact, block: str, out_channels: int, strides: int, kind: str):
    """The block's shortcut: identity, option A zero padding, or a 1x1 projection (+ norm)."""
    in_channels = x.shape[make.channel_axis]
    if strides == 1 and in_channels == out_channels:
        return x
    if kind == "identity":
        return ZeroPadShortcut(out_channels, strides=strides, data_format=make.data_format,
                               name=f"{block}_shortcut")(x)
    source = x if preact is None else preact  # v2 projects the pre-activated input
    y = make.conv(out_channels, 1, f"{block}_shortcut_conv", strides=strides)(source)
    if preact is None:
        y = _apply(make.norm_layer(out_channels, f"{block}_shortcut_{make.norm_tag}"), y)
    return y


def build_resnet(
    input_shape,
    depth: int | None,
    num_classes: int,
    *,
    blocks_per_stage=None,
    widths=(16, 32, 64),
    bottleneck: bool = False,
    residual: bool = True,
    shortcut: str = "identity",
    preactivation: bool = False,
    zero_init_residual: bool = False,
    fixup: bool = False,
    activation="relu",
    norm="batch",
    initializer="auto",
    bias_initializer="zeros",
    dropout: float = 0.0,
    norm_kwargs: dict | None = None,
    act_kwargs: dict | None = None,
    use_bias: bool | None = None,
    data_format: str = "channels_last",
    output_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """A CIFAR-style ResNet (or its plain twin) as a flat Functional model.

    Args:
        input_shape: one image, ``(H, W)`` or ``(H, W, C)`` (``(C, H, W)`` channels_first).
        depth: ``6n + 2`` (basic) or ``9n + 2`` (bottleneck) with the default three stages;
            None when `blocks_per_stage` is given.
        num_classes: outputs of the classifier.
        blocks_per_stage: blocks in each stage (one int for all) instead of `depth`.
        widths: filters of each stage (a bottleneck block outputs 4x).
        bottleneck: 1x1 -> 3x3 -> 1x1 blocks instead of two 3x3 convs.
        residual: False gives the plain twin (no shortcuts, same layers otherwise).
        shortcut: "identity" (option A, zero-padded, no parameters) or "projection"
            (option B: 1x1 conv + norm where the shape changes).
        preactivation: the v2 block (norm -> act -> conv).
        zero_init_residual: start every branch at zero (see the module docstring).
        fixup: Fixup initialization and scalar layers; needs ``norm=None``, residual blocks
            and post-activation.
        activation, norm, initializer, bias_initializer, norm_kwargs, act_kwargs, use_bias:
            as `build_conv`; `use_bias=None` drops conv biases with batch/group norm (and Fixup).
        dropout: rate of a Dropout before the last conv of each branch.
        data_format, output_activation: as `build_conv`.
        name: the model's name (default ``resnet20``, ``plain56``...).

    Example::

        model = keras_bn.build_resnet((28, 28, 1), 56, 10, preactivation=True, zero_init_residual=True)
    """
    input_shape, in_channels, reshaped = check_image_input(input_shape, data_format, DATA_FORMATS)
    widths = check_int_list("widths", widths)
    for flag, value in (("bottleneck", bottleneck), ("residual", residual), ("preactivation", preactivation),
                        ("zero_init_residual", zero_init_residual), ("fixup", fixup)):
        _check_bool(flag, value)
    blocks = _blocks_per_stage(depth, blocks_per_stage, len(widths), bottleneck)
    check_choice("shortcut", shortcut, SHORTCUTS)
    options = BlockOptions(
        activation=activation, norm=norm, initializer=initializer, bias_initializer=bias_initializer,
        dropout=dropout, norm_kwargs=norm_kwargs, act_kwargs=act_kwargs, use_bias=use_bias,
    )
    if resolve_activation(activation) == "maxout":
        raise ValueError(
            "`activation='maxout'` changes the channel count, which a residual sum cannot take "
            "(both sides must match). Use build_conv for maxout nets, or another activation here. "
            "Received: activation='maxout'"
        )
    expansion = BOTTLENECK_EXPANSION if bottleneck else 1
    num_classes = check_common(num_classes, output_activation, options, sorted({*widths, *(w * expansion for w in widths)}))
    if fixup and (options.norm != "none" or not residual or preactivation):
        raise ValueError(
            "`fixup=True` replaces normalization in residual post-activation blocks: it needs "
            "norm=None, residual=True and preactivation=False. Received: "
            f"norm={norm!r}, residual={residual}, preactivation={preactivation}"
        )
    if zero_init_residual and not residual:
        raise ValueError(
            "`zero_init_residual=True` needs residual=True: a plain net whose blocks start at "
            "zero outputs zeros. Received: zero_init_residual=True, residual=False"
        )
    if zero_init_residual and not preactivation and options.norm != "none" and options.norm_kwargs.get("scale") is False:
        raise ValueError(
            "`zero_init_residual=True` zeroes the last norm's gamma in post-activation blocks, "
            "but norm_kwargs has scale=False (no gamma); drop it or use preactivation=True. "
            f"Received: norm_kwargs={norm_kwargs!r}"
        )
    num_branches = sum(blocks)
    per_block = [(3, 1), (3, 1)] if not bottleneck else [(1, 1), (3, 1), (1, BOTTLENECK_EXPANSION)]  # (kernel, growth)
    estimate, channels = 9 * in_channels * widths[0], widths[0]
    for width, count in zip(widths, blocks):
        for _ in range(count):
            for k, grow in per_block:
                estimate += k * k * channels * width * grow
                channels = width * grow
    check_parameter_count(estimate + channels * num_classes, "widths", widths)
    make = _Layers(
        options,
        use_bias=(not (options.norm_spec.absorbs_bias or fixup)) if use_bias is None else use_bias,
        data_format=data_format,
        fixup_factor=fixup_scale(num_branches, 3 if bottleneck else 2),
    )
    total_depth = 2 + num_branches * (3 if bottleneck else 2)
    name = name or f"{'resnet' if residual else 'plain'}{total_depth}"

    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    if reshaped is not None:
        x = keras.layers.Reshape(reshaped, name="add_channel")(x)
    x = make.conv(widths[0], 3, "stem_conv")(x)
    if not preactivation:
        x = _apply(make.norm_layer(widths[0], f"stem_{make.norm_tag}"), x)
        if fixup:
            x = ScalarBias(name="stem_bias")(x)
        x = make.act_layer(f"stem_{make.act}")(x)
    for s, (width, count) in enumerate(zip(widths, blocks), start=1):
        for b in range(1, count + 1):
            block = f"stage{s}_block{b}"
            strides = 2 if (s > 1 and b == 1) else 1
            branch, preact = _branch(make, x, block, width, strides, bottleneck=bottleneck,
                                     preactivation=preactivation, zero_init=zero_init_residual, fixup=fixup)
            if residual:
                short = _shortcut(make, x, preact, block, width * expansion, strides, shortcut)
                branch = keras.layers.Add(name=f"{block}_add")([short, branch])
            x = branch if preactivation else make.act_layer(f"{block}_out_{make.act}")(branch)
    if preactivation:
        x = _apply(make.norm_layer(x.shape[make.channel_axis], f"final_{make.norm_tag}"), x)
        x = make.act_layer(f"final_{make.act}")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="global_avg_pool")(x)
    if fixup:
        x = ScalarBias(name="logits_bias")(x)
    outputs = output_head(x, num_classes, output_activation, initializer="zeros" if fixup else "glorot_uniform")
    return keras.Model(inputs, outputs, name=name)
