"""Fold inference-mode BatchNormalization into the layer before it, and check BN's two modes.

At test time BN is a fixed per-channel affine map ``y = gamma * (x - mean) / sqrt(var + eps)
+ beta`` (SEEDS §5), so after a Dense or convolution it can be merged into that layer's kernel
and bias: the same outputs with fewer ops. `fold_batchnorm` does that on a copy of the model
and reports what it folded and what it left; `check_batchnorm` catches the train/test-mode
mistakes that BN is known for (moving statistics never updated, too slow, or frozen).

Usage::

    folded, report = keras_bn.fold_batchnorm(model, return_report=True)
    print(report)                       # which BN layers were folded, which were left and why
    print(keras_bn.check_batchnorm(model, x_val[:256]))
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import keras
import numpy as np
from keras.src.models.functional import Functional  # what keras.models.clone_model rewires

from keras_bn._validation import check_float

__all__ = ["BatchNormCheck", "BatchNormRow", "FoldReport", "check_batchnorm", "fold_batchnorm"]

# Exact types only: a subclass may change what `call` does with the kernel.
_KERNEL_LAST = (  # kernel (..., in, out): the output channel is the last kernel axis
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)
_KERNEL_TRANSPOSE = (  # kernel (..., out, in)
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)  # kernel (..., in, mult)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)  # pointwise (..., in*m, out)
FOLDABLE_LAYERS = _KERNEL_LAST + _KERNEL_TRANSPOSE + _DEPTHWISE + _SEPARABLE

# Element-wise activations that can move into the folded layer's `activation` unchanged.
FUSABLE_ACTIVATIONS = frozenset({
    "softmax", "log_softmax",  # along the last axis in both places: a layer's activation sees its whole output
    "celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "log_sigmoid", "mish", "relu", "relu6", "selu",
    "sigmoid", "silu", "soft_shrink", "softplus", "softsign", "sparse_plus", "sparse_sigmoid",
    "squareplus", "swish", "tanh", "tanh_shrink",
})


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


@dataclasses.dataclass
class FoldReport:
    """What `fold_batchnorm` did.

    Attributes:
        folded: ``(bn_name, into_layer_name, fused_activation_or_None)`` per folded BN.
        skipped: ``(bn_name, reason)`` per BN left in place.
        fused: ``(activation_layer_name, into_layer_name, activation)`` per activation layer
            merged into a Dense/Conv layer that had no BN after it (e.g. the softmax head).

    Names of layers inside nested models are written ``outer/inner/bn``.
    """

    folded: list[tuple[str, str, str | None]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    fused: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        rows = [(bn, "folded", f"into {into}" + (f" (+ {act})" if act else "")) for bn, into, act in self.folded]
        rows += [(bn, "kept", reason) for bn, reason in self.skipped]
        rows += [(layer, "fused", f"{act} into {into}") for layer, into, act in self.fused]
        head = f"fold_batchnorm: {len(self.folded)} BatchNormalization folded, {len(self.skipped)} kept"
        return head if not rows else head + "\n" + _table(("layer", "result", "detail"), rows)


@dataclasses.dataclass
class BatchNormRow:
    """One BatchNormalization layer in a `BatchNormCheck`.

    `mean_shift` is the RMS over channels of ``|moving_mean - batch_mean| / batch_std``;
    `var_ratio` is the geometric mean over channels of ``max(r, 1/r)`` with
    ``r = (moving_var + eps) / (batch_var + eps)`` (1.0 means a perfect match).
    """

    name: str
    channels: int
    momentum: float
    trainable: bool
    mean_shift: float
    var_ratio: float
    status: str  # "ok", "never updated", "frozen" or "stale"
    advice: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_ADVICE = {
    "never updated": (
        "its moving statistics still hold their initial values (mean 0, variance 1): the model "
        "never ran in training mode (fit, or a call with training=True), or the weights were "
        "loaded without them. Train it, or recompute the statistics by running training data "
        "through the model with training=True before evaluating."
    ),
    "frozen": (
        "the layer is frozen (trainable=False), so Keras runs it in inference mode even inside "
        "fit() and never updates its moving statistics, while the layers below it changed. "
        "Unfreeze it (layer.trainable = True) for a few epochs, or keep it frozen only if the "
        "layers below it are frozen too."
    ),
    "stale": (
        "its moving statistics are far from the statistics of this batch: with momentum={m} the "
        "moving average keeps momentum**steps of its old value, which is too slow for a short "
        "run ({m}**100 = {m100:.2f}). Train longer, lower `momentum`, or recompute the "
        "statistics; if this batch is not from the training distribution, check the input "
        "preprocessing first."
    ),
}


@dataclasses.dataclass
class BatchNormCheck:
    """The result of `check_batchnorm`: one `BatchNormRow` per BN layer plus the output gap.

    `ok` is True when no BN layer was flagged. `output_gap` is the largest absolute difference
    between training-mode and inference-mode outputs on the batch (noise layers switched off),
    `output_gap_rel` the same divided by the inference outputs' standard deviation.
    """

    rows: list[BatchNormRow]
    output_gap: float
    output_gap_rel: float
    mean_tol: float
    var_tol: float

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def flagged(self) -> list[BatchNormRow]:
        return [row for row in self.rows if not row.ok]

    def __str__(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.flagged)} of {len(self.rows)} BN layers flagged"
        lines = [
            f"check_batchnorm: {verdict}. Training vs inference outputs differ by up to "
            f"{self.output_gap:.3g} ({self.output_gap_rel:.3g} x the output std). "
            f"Flagged when mean_shift > {self.mean_tol:g} or var_ratio > {self.var_tol:g}."
        ]
        if not self.rows:
            return lines[0] + "\nThe model has no BatchNormalization layer."
        rows = [
            (r.name, str(r.channels), f"{r.momentum:g}", str(r.trainable), f"{r.mean_shift:.3f}",
             f"{r.var_ratio:.3f}", r.status)
            for r in self.rows
        ]
        lines.append(_table(("layer", "channels", "momentum", "trainable", "mean_shift", "var_ratio", "status"), rows))
        by_status: dict[str, list[BatchNormRow]] = {}
        for r in self.flagged:
            by_status.setdefault(r.status, []).append(r)
        for status, group in by_status.items():
            names = ", ".join(r.name for r in group[:5]) + (", ..." if len(group) > 5 else "")
            lines.append(f"{status} ({len(group)}: {names}): {group[0].advice}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# fold_batchnorm
# --------------------------------------------------------------------------------------


def _check_model(model, *, graph: bool) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model. Received: model={model!r} of type {type(model).__name__}"
        )
    if graph and not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            "`model` must be a Functional or Sequential keras.Model (a subclassed model's graph "
            f"is not known, so its layers cannot be rewired). Received: model={model.name!r} of "
            f"type {type(model).__name__}"
        )
    if not model.built or not model.inputs:
        raise ValueError(
            "`model` must be built with a known input shape (create it with keras.Input, or "
            f"call model.build(input_shape)). Received: model={model.name!r}"
        )


def _output_channel_axis(layer) -> int:
    if isinstance(layer, keras.layers.Dense):
        return -1
    return 1 if layer.data_format == "channels_first" else -1


def _fused_activation_name(layer, dtype_name: str) -> str | None:
    """The activation name to move into the folded layer, or None if `layer` can't be fused."""
    if type(layer) not in (keras.layers.ReLU, keras.layers.Activation) or layer.dtype_policy.name != dtype_name:
        return None
    if type(layer) is keras.layers.ReLU:
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    name = keras.activations.serialize(layer.activation)
    return name if isinstance(name, str) and name in FUSABLE_ACTIVATIONS else None


def _why_not_foldable(bn, producer, consumers, outputs, node_counts, tensor) -> str | None:
    """None if `bn` can be folded into `producer`, else the reason (one phrase)."""
    if producer is None:
        return "follows a model input"
    kind = type(producer).__name__
    if isinstance(producer, keras.Model):
        return f"follows the nested model {producer.name!r} (folds do not cross model boundaries)"
    if type(producer) not in FOLDABLE_LAYERS:
        hint = " (BN after an activation is not a per-channel affine map of a kernel)" if isinstance(
            producer, (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                       keras.layers.PReLU, keras.layers.ELU)) else ""
        return f"follows {producer.name!r} ({kind}), not a Dense/Conv layer{hint}"
    if getattr(producer, "quantization_mode", None) or getattr(producer, "lora_enabled", False):
        return f"follows {producer.name!r}, which is quantized or uses LoRA"
    act = keras.activations.serialize(producer.activation)
    if act != "linear":
        return f"follows {producer.name!r}, which applies activation {act!r} before the BN"
    if node_counts[id(producer)] > 1:
        return f"{producer.name!r} is shared (called {node_counts[id(producer)]} times)"
    if node_counts[id(bn)] > 1:
        return f"the BN layer is shared (called {node_counts[id(bn)]} times)"
    if len(consumers[id(tensor)]) > 1 or id(tensor) in outputs:
        return f"the output of {producer.name!r} has other consumers besides this BN"
    rank = bn.input_spec.ndim
    if bn.axis % rank != _output_channel_axis(producer) % rank:
        return (f"BN axis {bn.axis} is not the channel axis of {producer.name!r} "
                f"({_output_channel_axis(producer) % rank} of rank {rank})")
    if _bias_add_hazard(producer, bn):
        return (f"{producer.name!r} is channels_first and its last spatial size equals (or may "
                f"equal) its channel count: Keras' TensorFlow ops.add would then add the folded "
                f"bias on the wrong axis")
    return None


def _bias_add_hazard(producer, bn) -> bool:
    """True where keras.ops.add (TF backend) would broadcast a (1, C, 1...) bias wrongly.

    Keras 3's TF `add` turns ``x + bias`` into ``tf.nn.bias_add`` and picks NHWC whenever
    ``x.shape[-1] == C``, even for a channels_first bias; a folded channels_first layer must
    therefore not get a bias when its last spatial size is C or unknown.
    """
    if keras.backend.backend() != "tensorflow" or _output_channel_axis(producer) != 1:
        return False
    shape = (bn.get_build_config() or {}).get("input_shape") or ()
    if len(shape) < 3:
        return False
    return shape[-1] is None or shape[-1] == shape[1]


def _folded_weights(layer, bn) -> list[np.ndarray]:
    """The weights of `layer` with `bn` (inference mode) folded in; bias always present."""
    eps = float(bn.epsilon)
    mean = np.asarray(bn.moving_mean, dtype=np.float64)
    var = np.asarray(bn.moving_variance, dtype=np.float64)
    gamma = np.asarray(bn.gamma, dtype=np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, dtype=np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + eps)

    weights = [np.asarray(w) for w in layer.get_weights()]
    dtypes = [w.dtype for w in weights]
    k = 1 if isinstance(layer, _SEPARABLE) else 0  # separable: scale the pointwise kernel
    kernel = weights[k].astype(np.float64)
    if isinstance(layer, _KERNEL_TRANSPOSE):
        kernel = kernel * scale[:, None]
    elif isinstance(layer, _DEPTHWISE):
        kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        kernel = kernel * scale
    bias = weights[k + 1].astype(np.float64) if layer.use_bias else np.zeros_like(mean)
    bias = beta + (bias - mean) * scale
    out = weights[:k] + [kernel.astype(dtypes[k]), bias.astype(dtypes[k])]
    return out


class _Dropped:
    """Stands in for a layer that the rebuilt graph skips (a folded BN, a fused activation)."""

    def __init__(self, name: str):
        self.name = name


def _fold_any(model, report: FoldReport, prefix: str, fuse_activation: bool):
    if isinstance(model, keras.Sequential):
        return _fold_sequential(model, report, prefix, fuse_activation)
    return _fold_functional(model, report, prefix, fuse_activation)


def _clone_layer(layer, report, prefix, fuse_activation, plan, pairs):
    """Copy of `layer` (weights set later from `pairs`), honoring the fold `plan`."""
    if isinstance(layer, keras.Model):
        return _fold_any(layer, report, f"{prefix}{layer.name}/", fuse_activation)
    if id(layer) in plan.dropped:
        return _Dropped(layer.name)
    if not isinstance(layer, keras.layers.Layer):
        return layer  # a stateless keras.ops operation
    config = layer.get_config()
    if id(layer) in plan.folds:
        bn, act = plan.folds[id(layer)]
        if bn is not None:
            config["use_bias"] = True
        if act is not None:
            config["activation"] = act
    new = layer.__class__.from_config(config)
    pairs.append((layer, new))
    return new


@dataclasses.dataclass
class _Plan:
    folds: dict = dataclasses.field(default_factory=dict)  # id(linear) -> (bn or None, activation name)
    dropped: set = dataclasses.field(default_factory=set)  # ids of folded BN / fused activations


def _set_weights(pairs, plan) -> None:
    for old, new in pairs:
        if id(old) in plan.folds and plan.folds[id(old)][0] is not None:
            new.set_weights(_folded_weights(old, plan.folds[id(old)][0]))
        elif old.weights:
            new.set_weights(old.get_weights())


def _record(plan: _Plan, report: FoldReport, prefix: str, linear, bn, act_layer, fuse_activation):
    act = None
    if fuse_activation and act_layer is not None:
        act = _fused_activation_name(act_layer, linear.dtype_policy.name)
    plan.folds[id(linear)] = (bn, act)
    plan.dropped.add(id(bn))
    if act is not None:
        plan.dropped.add(id(act_layer))
    report.folded.append((prefix + bn.name, prefix + linear.name, act and f"{act_layer.name}:{act}"))


def _fuse_activation_into(plan: _Plan, report: FoldReport, prefix: str, act_layer, producer) -> None:
    """Merge `act_layer` into `producer` (a Dense/Conv with no BN after it) where that is exact."""
    if (type(producer) not in FOLDABLE_LAYERS or id(producer) in plan.folds or id(act_layer) in plan.dropped
            or keras.activations.serialize(producer.activation) != "linear"
            or getattr(producer, "quantization_mode", None) or getattr(producer, "lora_enabled", False)):
        return
    act = _fused_activation_name(act_layer, producer.dtype_policy.name)
    if act is not None:
        plan.folds[id(producer)] = (None, act)
        plan.dropped.add(id(act_layer))
        report.fused.append((prefix + act_layer.name, prefix + producer.name, act))


def _fold_functional(model, report: FoldReport, prefix: str, fuse_activation: bool):
    # The graph, read from the model's nodes (the same structure keras.models.clone_model walks).
    by_depth = model._nodes_by_depth
    nodes = [n for d in sorted(by_depth, reverse=True) for n in by_depth[d] if n.operation is not None and not n.is_input]
    node_counts = defaultdict(int)
    consumers = defaultdict(list)
    for node in nodes:
        node_counts[id(node.operation)] += 1
        for t in node.input_tensors:
            consumers[id(t)].append(node)
    outputs = {id(t) for t in model.outputs}

    plan = _Plan()
    for node in nodes:  # inputs first
        bn = node.operation
        if type(bn) is not keras.layers.BatchNormalization:
            if isinstance(bn, keras.layers.BatchNormalization):
                report.skipped.append((prefix + bn.name, f"{type(bn).__name__} is a BatchNormalization subclass"))
            continue
        if len(node.input_tensors) != 1:
            report.skipped.append((prefix + bn.name, "called with several tensor inputs"))
            continue
        if node.arguments.kwargs.get("training") is True:
            report.skipped.append((prefix + bn.name, "called with training=True in the graph"))
            continue
        tensor = node.input_tensors[0]
        producer = tensor._keras_history.operation if getattr(tensor, "_keras_history", None) else None
        if isinstance(producer, keras.layers.InputLayer):
            producer = None
        reason = _why_not_foldable(bn, producer, consumers, outputs, node_counts, tensor)
        if reason is None and id(producer) in plan.folds:
            reason = f"{producer.name!r} already absorbs another BN"
        if reason is not None:
            report.skipped.append((prefix + bn.name, reason))
            continue
        out = node.outputs[0]
        act_layer = None
        after = consumers[id(out)]
        if len(after) == 1 and id(out) not in outputs and node_counts[id(after[0].operation)] == 1:
            act_layer = after[0].operation
        _record(plan, report, prefix, producer, bn, act_layer, fuse_activation)

    if fuse_activation:  # activation layers right after a Dense/Conv that no BN followed
        for node in nodes:
            if len(node.input_tensors) != 1 or node_counts[id(node.operation)] != 1:
                continue
            tensor = node.input_tensors[0]
            producer = tensor._keras_history.operation if getattr(tensor, "_keras_history", None) else None
            if (producer is not None and node_counts[id(producer)] == 1 and id(tensor) not in outputs
                    and len(consumers[id(tensor)]) == 1):
                _fuse_activation_into(plan, report, prefix, node.operation, producer)

    pairs: list = []
    clone_fn = lambda layer: _clone_layer(layer, report, prefix, fuse_activation, plan, pairs)  # noqa: E731

    def call_fn(layer, *args, **kwargs):
        if isinstance(layer, _Dropped):
            return args[0]
        return layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone_fn, call_function=call_fn)
    _set_weights(pairs, plan)
    return folded


def _fold_sequential(model, report: FoldReport, prefix: str, fuse_activation: bool):
    layers = list(model.layers)
    plan = _Plan()
    for i, bn in enumerate(layers):
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        if type(bn) is not keras.layers.BatchNormalization:
            report.skipped.append((prefix + bn.name, f"{type(bn).__name__} is a BatchNormalization subclass"))
            continue
        producer = layers[i - 1] if i > 0 else None
        tensor = None  # in a Sequential model each output has exactly one consumer
        counts = defaultdict(lambda: 1)
        reason = _why_not_foldable(bn, producer, defaultdict(list), set(), counts, tensor)
        if reason is not None:
            report.skipped.append((prefix + bn.name, reason))
            continue
        act_layer = layers[i + 1] if i + 1 < len(layers) else None
        _record(plan, report, prefix, producer, bn, act_layer, fuse_activation)
    if fuse_activation:  # activation layers right after a Dense/Conv that no BN followed
        for producer, act_layer in zip(layers, layers[1:]):
            _fuse_activation_into(plan, report, prefix, act_layer, producer)

    pairs: list = []
    new_layers = [_clone_layer(layer, report, prefix, fuse_activation, plan, pairs) for layer in layers]
    ref = model.inputs[0]
    inputs = keras.Input(batch_shape=ref.shape, dtype=ref.dtype, name=getattr(ref, "name", None))
    folded = keras.Sequential(
        [inputs] + [layer for layer in new_layers if not isinstance(layer, _Dropped)],
        name=model.name, trainable=model.trainable,
    )
    _set_weights(pairs, plan)
    return folded


def xla_opcode_counts(model, x) -> "collections.Counter":
    """Opcode counts of the XLA-optimized HLO of ``model(x, training=False)`` (CPU or GPU).

    How to check that folding leaves XLA less to do (XLA fuses inference BN by itself)::

        before, after = xla_opcode_counts(model, x), xla_opcode_counts(fold_batchnorm(model), x)
    """
    import collections
    import re

    import tensorflow as tf

    fn = tf.function(lambda t: model(t, training=False), jit_compile=True)
    hlo = fn.experimental_get_compiler_ir(tf.constant(x))(stage="optimized_hlo")
    return collections.Counter(re.findall(r"^\s*(?:ROOT )?%\S+ = \S+ ([a-z-]+)\(", hlo, re.M))


def fold_batchnorm(model, *, fuse_activation: bool = True, return_report: bool = False):
    """A copy of `model` with every foldable inference-mode BatchNormalization folded away.

    A BN is folded when it directly follows a Dense, Conv1D/2D/3D, Conv*Transpose,
    DepthwiseConv1D/2D or SeparableConv1D/2D layer (with or without bias, either data format)
    that has no activation of its own, whose output goes only to that BN, and whose channel
    axis is the BN axis. The layer's kernel is scaled per output channel by
    ``s = gamma / sqrt(moving_var + eps)`` and its bias becomes ``beta + (b - mean) * s``;
    synchronized BN folds the same way. With `fuse_activation`, an Activation or ReLU layer
    that is the only consumer of the BN, or of a Dense/Conv with no BN after it, moves into
    that layer's `activation` (exact, one layer call less; same dtype policy only). Every
    other BN is kept and listed with the reason.

    The folded model uses standard Keras layers only, so it saves to ``.keras`` and exports
    with ``model.export`` like any model. It is for inference: calling it with
    ``training=True`` no longer normalizes with batch statistics. `model` is not modified.
    Nested Functional/Sequential models are folded inside; folds never cross their borders.

    Args:
        model: a built Functional or Sequential ``keras.Model``.
        fuse_activation: also merge a following activation layer into the folded layer, and an
            activation layer that directly follows a Dense/Conv with no BN (e.g. a softmax head).
        return_report: also return a `FoldReport` (folded and kept BN layers, with reasons).

    Returns:
        The folded ``keras.Model``, or ``(model, FoldReport)`` with `return_report`.

    Example::

        folded, report = keras_bn.fold_batchnorm(model, return_report=True)
        print(report)
    """
    _check_model(model, graph=True)
    if not isinstance(fuse_activation, bool):
        raise TypeError(f"`fuse_activation` must be a bool. Received: fuse_activation={fuse_activation!r}")
    report = FoldReport()
    folded = _fold_any(model, report, "", fuse_activation)
    return (folded, report) if return_report else folded


# --------------------------------------------------------------------------------------
# check_batchnorm
# --------------------------------------------------------------------------------------


def _batchnorm_layers(model, prefix=""):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            yield prefix + layer.name, layer
        elif isinstance(layer, keras.Model) or getattr(layer, "layers", None):
            yield from _batchnorm_layers(layer, f"{prefix}{layer.name}/")


def _noise_layers(model):
    kinds = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
             keras.layers.AlphaDropout)
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, kinds):
            yield layer
        stack.extend(getattr(layer, "layers", []) or [])


def _flat_outputs(outputs) -> np.ndarray:
    return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in keras.tree.flatten(outputs)])


def _moving_stats(bn):
    return np.asarray(bn.moving_mean, np.float64), np.asarray(bn.moving_variance, np.float64)


def _restore(variables, values) -> None:
    for v, value in zip(variables, values):
        v.assign(value)


def check_batchnorm(model, x, *, mean_tol: float = 0.5, var_tol: float = 2.0) -> BatchNormCheck:
    """Compare BN's training and inference modes on the batch `x`; flag stale moving statistics.

    For every BatchNormalization layer (nested models included) the moving mean and variance
    are compared with the batch statistics of that layer's input, as seen in training mode.
    A layer is flagged when ``mean_shift > mean_tol`` (shift in batch standard deviations,
    RMS over channels) or ``var_ratio > var_tol`` (see `BatchNormRow`), and the report says
    why (never updated, frozen, stale) and what to do. It also measures how far the model's
    training-mode outputs are from its inference-mode outputs (dropout/noise switched off).

    The model's weights, moving statistics and layer settings are restored afterwards.

    Args:
        model: a built ``keras.Model`` (subclassed models work too).
        x: a batch the model accepts, ideally from the training data; at least 2 samples.
        mean_tol: flag threshold for `mean_shift`.
        var_tol: flag threshold for `var_ratio` (>= 1).

    Returns:
        A `BatchNormCheck`: ``print`` it, test ``.ok``, read ``.rows``.

    Example::

        result = keras_bn.check_batchnorm(model, x_train[:512])
        if not result.ok:
            print(result)
    """
    _check_model(model, graph=False)
    mean_tol = check_float("mean_tol", mean_tol, low=0.0, low_inclusive=False)
    var_tol = check_float("var_tol", var_tol, low=1.0, low_inclusive=False)
    leaves = keras.tree.flatten(x)
    shape = getattr(leaves[0], "shape", None) if leaves else None
    if not shape or shape[0] is None or int(shape[0]) < 2:
        raise ValueError(
            "`x` must be a batch of at least 2 samples (batch statistics need several). "
            f"Received: x with shape {shape}"
        )

    bns = list(_batchnorm_layers(model))
    noise = list(_noise_layers(model))
    variables = list(model.variables)
    saved_values = [np.array(v.numpy()) for v in variables]
    saved_attrs = [(bn, bn.momentum, bn.trainable) for _, bn in bns]
    saved_noise = [(layer, dict((a, getattr(layer, a)) for a in ("rate", "stddev") if hasattr(layer, a)))
                   for layer in noise]
    try:
        for layer, attrs in saved_noise:
            for a in attrs:
                setattr(layer, a, 0.0)
        # With momentum 0 a training-mode call leaves each layer's batch statistics in its
        # moving statistics, whatever the model's structure; the outputs are unaffected.
        trainable = [bn for _, bn in bns if bn.trainable]
        for bn in trainable:
            bn.momentum = 0.0
        train_out = _flat_outputs(model(x, training=True))
        batch_stats = {id(bn): _moving_stats(bn) for bn in trainable}
        # A frozen layer runs in inference mode; unfreeze one at a time so that every other
        # layer still behaves as in fit().
        for _, bn in bns:
            if id(bn) in batch_stats:
                continue
            _restore(variables, saved_values)
            bn.trainable, bn.momentum = True, 0.0
            model(x, training=True)
            batch_stats[id(bn)] = _moving_stats(bn)
            bn.trainable = False
    finally:
        for bn, momentum, trainable in saved_attrs:
            bn.momentum = momentum
            bn.trainable = trainable
        for layer, attrs in saved_noise:
            for a, value in attrs.items():
                setattr(layer, a, value)
        _restore(variables, saved_values)
    infer_out = _flat_outputs(model(x, training=False))
    gap = float(np.max(np.abs(train_out - infer_out))) if train_out.size else 0.0
    gap_rel = gap / (float(np.std(infer_out)) + 1e-12)

    rows = []
    for name, bn in bns:
        b_mean, b_var = batch_stats[id(bn)]
        eps = float(bn.epsilon)
        m_mean = np.asarray(bn.moving_mean, np.float64)
        m_var = np.asarray(bn.moving_variance, np.float64)
        shift = float(np.sqrt(np.mean(((m_mean - b_mean) / np.sqrt(b_var + eps)) ** 2)))
        ratio = float(np.exp(np.mean(np.abs(np.log((m_var + eps) / (b_var + eps))))))
        status = "ok"
        if shift > mean_tol or ratio > var_tol:
            if not bn.trainable:
                status = "frozen"
            elif not m_mean.any() and np.all(m_var == 1.0):
                status = "never updated"
            else:
                status = "stale"
        advice = _ADVICE.get(status, "").format(m=bn.momentum, m100=bn.momentum**100)
        rows.append(BatchNormRow(name, int(m_mean.shape[0]), float(bn.momentum), bool(bn.trainable),
                                 shift, ratio, status, advice))
    return BatchNormCheck(rows, gap, gap_rel, mean_tol, var_tol)
