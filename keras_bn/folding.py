"""Fold inference-mode BatchNormalization into the layer before it.

At test time BN is a fixed per-channel affine map ``y = gamma * (x - mean) / sqrt(var + eps)
+ beta`` (SEEDS §5), so after a Dense or convolution it can be merged into that layer's kernel
and bias: the same outputs with fewer ops. `fold_batchnorm` does that on a copy of the model
and reports what it folded and what it left. What may fold, and why a BN stays, is decided in
`keras_bn._fold_rules`; this module plans the folds and rebuilds the graph.
(`keras_bn.check_batchnorm`, in `keras_bn.bn_stats`, checks BN's two modes before you fold.)

Usage::

    folded, report = keras_bn.fold_batchnorm(model, return_report=True)
    print(report)                       # which BN layers were folded, which were left and why
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import keras

from keras_bn import _keras_internals as internals
from keras_bn import _warnings
from keras_bn._fold_rules import FOLDABLE_LAYERS, FUSABLE_ACTIVATIONS  # noqa: F401  (public here since 0.1)
from keras_bn._fold_rules import folded_weights, fused_activation_name, why_not_foldable
from keras_bn._tables import format_table

__all__ = ["FoldReport", "fold_batchnorm"]

_MOVED = {"check_batchnorm": "check_batchnorm", "BatchNormRow": "BatchNormRow", "BatchNormReport": "BatchNormReport",
          "BatchNormCheck": "BatchNormReport"}


def __getattr__(name: str):
    """check_batchnorm and its results moved to keras_bn.bn_stats; old imports still work, with a warning."""
    if name in _MOVED:
        from keras_bn import bn_stats

        _warnings.warn(f"keras_bn.folding.{name} moved: use keras_bn.bn_stats.{_MOVED[name]} "
                       f"(or keras_bn.{_MOVED[name]}).", DeprecationWarning)
        return getattr(bn_stats, _MOVED[name])
    raise AttributeError(f"module 'keras_bn.folding' has no attribute {name!r}")


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


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
        return head if not rows else head + "\n" + format_table(["layer", "result", "detail"], rows)


# --------------------------------------------------------------------------------------
# fold_batchnorm
# --------------------------------------------------------------------------------------


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model. Received: model={model!r} of type {type(model).__name__}"
        )
    if not isinstance(model, keras.Sequential) and not internals.is_functional(model):
        raise ValueError(
            "`model` must be a Functional or Sequential keras.Model (a subclassed model's graph "
            f"is not known, so its layers cannot be rewired); build the same layers as a Functional "
            f"model, keras.Model(inputs, outputs), to fold it. Received: model={model.name!r} of "
            f"type {type(model).__name__}"
        )
    if not model.built or not model.inputs:
        raise ValueError(
            "`model` must be built with a known input shape (create it with keras.Input, or "
            f"call model.build(input_shape)). Received: model={model.name!r}"
        )


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
            new.set_weights(folded_weights(old, plan.folds[id(old)][0]))
        elif old.weights:
            new.set_weights(old.get_weights())


def _record(plan: _Plan, report: FoldReport, prefix: str, linear, bn, act_layer, fuse_activation):
    act = None
    if fuse_activation and act_layer is not None:
        act = fused_activation_name(act_layer, linear.dtype_policy.name)
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
    act = fused_activation_name(act_layer, producer.dtype_policy.name)
    if act is not None:
        plan.folds[id(producer)] = (None, act)
        plan.dropped.add(id(act_layer))
        report.fused.append((prefix + act_layer.name, prefix + producer.name, act))


def _fold_functional(model, report: FoldReport, prefix: str, fuse_activation: bool):
    # The graph, read from the model's nodes (the same structure keras.models.clone_model walks).
    nodes = internals.functional_nodes(model)
    op, inputs_of = internals.node_operation, internals.node_input_tensors
    node_counts = defaultdict(int)
    consumers = defaultdict(list)
    for node in nodes:
        node_counts[id(op(node))] += 1
        for t in inputs_of(node):
            consumers[id(t)].append(node)
    outputs = {id(t) for t in model.outputs}

    plan = _Plan()
    for node in nodes:  # inputs first
        bn = op(node)
        if type(bn) is not keras.layers.BatchNormalization:
            if isinstance(bn, keras.layers.BatchNormalization):
                report.skipped.append((prefix + bn.name, f"{type(bn).__name__} is a BatchNormalization subclass"))
            continue
        if len(inputs_of(node)) != 1:
            report.skipped.append((prefix + bn.name, "called with several tensor inputs"))
            continue
        if internals.node_call_kwargs(node).get("training") is True:
            report.skipped.append((prefix + bn.name, "called with training=True in the graph"))
            continue
        tensor = inputs_of(node)[0]
        producer = internals.producing_operation(tensor)
        if isinstance(producer, keras.layers.InputLayer):
            producer = None
        reason = why_not_foldable(bn, producer, consumers, outputs, node_counts, tensor)
        if reason is None and id(producer) in plan.folds:
            reason = f"{producer.name!r} already absorbs another BN"
        if reason is not None:
            report.skipped.append((prefix + bn.name, reason))
            continue
        out = internals.node_outputs(node)[0]
        act_layer = None
        after = consumers[id(out)]
        if len(after) == 1 and id(out) not in outputs and node_counts[id(op(after[0]))] == 1:
            act_layer = op(after[0])
        _record(plan, report, prefix, producer, bn, act_layer, fuse_activation)

    if fuse_activation:  # activation layers right after a Dense/Conv that no BN followed
        for node in nodes:
            if len(inputs_of(node)) != 1 or node_counts[id(op(node))] != 1:
                continue
            tensor = inputs_of(node)[0]
            producer = internals.producing_operation(tensor)
            if (producer is not None and node_counts[id(producer)] == 1 and id(tensor) not in outputs
                    and len(consumers[id(tensor)]) == 1):
                _fuse_activation_into(plan, report, prefix, op(node), producer)

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
        reason = why_not_foldable(bn, producer, defaultdict(list), set(), counts, tensor)
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
    _check_model(model)
    if not isinstance(fuse_activation, bool):
        raise TypeError(f"`fuse_activation` must be a bool. Received: fuse_activation={fuse_activation!r}")
    report = FoldReport()
    folded = _fold_any(model, report, "", fuse_activation)
    return (folded, report) if return_report else folded
