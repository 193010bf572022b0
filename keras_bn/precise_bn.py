"""Precise BatchNorm: re-estimate every BN layer's moving statistics exactly, with weights fixed.

A BatchNormalization layer's moving mean and variance are a momentum average of batch
statistics taken while the weights kept changing, so after a short run (or a change of data)
they disagree with the statistics the layer sees at inference (keras#7265; keras#3949 asked
for this remedy). `recompute_batchnorm_statistics` replaces them by the exact population mean
and (biased, as Keras' training step uses) variance of each layer's inputs over `data`, the
inputs computed in inference mode. Layers are done one at a time in the order the model calls
them, each pass using the already re-estimated statistics upstream, so every layer ends up
with the statistics of exactly the inputs it sees at inference (one pass over the data per BN
layer). Nothing else changes: no weight, no optimizer variable.

`batchnorm_gaps` measures the disagreement that the doctor's stale-statistics rule reads.

Usage::

    keras_bn.recompute_batchnorm_statistics(model, x_train, steps=100)
"""

from __future__ import annotations

import contextlib
import functools
import math

import keras
import numpy as np

from keras_bn._validation import check_positive_int
from keras_bn.callbacks._patch import set_on_instance

__all__ = ["batchnorm_gaps", "recompute_batchnorm_statistics"]


def _batchnorm_layers(model, trainable_only: bool = False) -> list[tuple[str, keras.layers.Layer]]:
    from keras_bn.callbacks._layers import iter_layers

    return [(path, layer) for path, layer in iter_layers(model, parts=True)  # BN inside blocks and user layers too
            if isinstance(layer, keras.layers.BatchNormalization) and (layer.trainable or not trainable_only)]


@contextlib.contextmanager
def _capturing(layers, sink):
    """Within the block, each layer of `layers` calls ``sink(layer, inputs)`` when called."""
    undos = []
    for layer in layers:
        def call(inputs, *args, _layer=layer, _original=layer.call, **kwargs):
            sink(_layer, inputs)
            return _original(inputs, *args, **kwargs)

        undos.append(set_on_instance(layer, "call", call))
    try:
        yield
    finally:
        for undo in reversed(undos):
            undo()


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch (Chan et al.)."""

    def __init__(self, layer):
        self.layer = layer
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, inputs) -> None:
        x = np.asarray(keras.ops.convert_to_numpy(inputs), dtype=np.float64)
        axis = self.layer.axis if isinstance(self.layer.axis, (list, tuple)) else [self.layer.axis]
        keep = {a % x.ndim for a in axis}
        axes = tuple(a for a in range(x.ndim) if a not in keep)
        n = int(np.prod([x.shape[a] for a in axes]))
        if n == 0:
            return
        mean = x.mean(axis=axes)
        self.merge(n, mean, np.square(x - np.expand_dims(mean, axes)).sum(axis=axes))

    def merge(self, n, mean, m2) -> None:
        """Add a batch of `n` values per channel with this `mean` and sum of squared deviations."""
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + np.square(delta) * self.count * n / total
        self.count = total

    @property
    def variance(self):
        return self.m2 / self.count


def _is_tf_dataset(data) -> bool:
    """Whether `data` is a tf.data.Dataset (without importing TensorFlow for anything else)."""
    if not type(data).__module__.startswith("tensorflow"):
        return False
    import tensorflow as tf

    return isinstance(data, tf.data.Dataset)


def _input_batches(data, steps, batch_size):
    """The model inputs of `data` as a re-iterable list of batches (at most `steps`)."""
    def features(element):
        return element[0] if isinstance(element, tuple) else element

    if isinstance(data, tuple):
        data = data[0]
    is_tf_dataset = _is_tf_dataset(data)
    if isinstance(data, (np.ndarray, list, dict)) or hasattr(data, "__array__") and not is_tf_dataset:
        length = len(keras.tree.flatten(data)[0])
        count = math.ceil(length / batch_size)
        count = count if steps is None else min(count, steps)
        return [keras.tree.map_structure(lambda a: a[i * batch_size:(i + 1) * batch_size], data) for i in range(count)]
    if is_tf_dataset:
        import tensorflow as tf

        if steps is None and data.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError("`data` is an infinite tf.data.Dataset: pass `steps` (how many batches to use). "
                             "Received: steps=None")
        iterator = iter(data)
    elif isinstance(data, keras.utils.PyDataset):
        iterator = (data[i] for i in range(len(data)))
    elif hasattr(data, "__iter__") or hasattr(data, "__next__"):
        iterator = iter(data)
    else:
        raise TypeError("`data` must be NumPy arrays (x or (x, y)), a tf.data.Dataset, a keras.utils.PyDataset "
                        f"or a generator of batches. Received: data={type(data).__name__}")
    batches = []
    for element in iterator:
        batches.append(features(element))
        if steps is not None and len(batches) >= steps:
            break
    if not batches:
        raise ValueError("`data` yielded no batch: nothing to estimate the statistics from.")
    return batches


def recompute_batchnorm_statistics(model, data, steps: int | None = None, batch_size: int = 256) -> dict:
    """Set every BatchNormalization layer's moving mean and variance to the exact mean and
    variance of its inputs (in inference mode) over `data`.

    Args:
        model: a built Keras model (any style) with BatchNormalization layers.
        data: NumPy inputs ``x`` (or ``(x, y)``), a ``tf.data.Dataset`` or generator of
            ``x`` / ``(x, y, ...)`` batches, or a ``keras.utils.PyDataset``. Non-array data is
            held in memory as a list of batches, so each layer's pass sees the same data.
        steps: use at most this many batches (needed for an infinite dataset).
        batch_size: batch size for NumPy inputs.

    Returns ``{layer path: number of values per channel used}``.

    Example::

        keras_bn.recompute_batchnorm_statistics(model, x_train[:10000])
    """
    if steps is not None:
        steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    layers = _batchnorm_layers(model)
    if not layers:
        return {}
    batches = _input_batches(data, steps, batch_size)
    path_of = {id(layer): path for path, layer in layers}
    pending = {id(layer): layer for _, layer in layers}
    used = {}
    while pending:
        moments, order = {}, []

        def sink(layer, inputs):
            if id(layer) in pending:
                if id(layer) not in moments:
                    moments[id(layer)] = _Moments(layer)
                    order.append(id(layer))
                moments[id(layer)].add(inputs)

        with _capturing(list(pending.values()), sink):
            for batch in batches:
                model(batch, training=False)
        if not order:  # layers the model never calls on these inputs keep their statistics
            break
        first = moments[order[0]]
        first.layer.moving_mean.assign(first.mean.astype(np.float32))
        first.layer.moving_variance.assign(first.variance.astype(np.float32))
        used[path_of[order[0]]] = first.count
        del pending[order[0]]
    return used


def batchnorm_gaps(model, x, keep_traced: bool = False) -> dict[str, float]:
    """How far each trainable BN layer's inference output on `x` is from its training-mode
    output on the same inputs, as an RMS over channels in units of the output's std.

    Per channel the training-mode output is ``(x - m_b) / s_b`` and the inference one
    ``(x - m) / s`` (batch vs moving statistics, before gamma and beta); their RMS difference
    over the batch is ``sqrt((s_b / s - 1)^2 + ((m_b - m) / s)^2)``. Inputs are those of an
    inference-mode pass (each layer is compared on the same inputs). 0 when the moving
    statistics are those of `x`; about ``sqrt(1.5 / n)`` from sampling noise for n values
    per channel. `keep_traced`: on TensorFlow, trace the pass once per model and keep it for
    later calls (the doctor measures at the end of every fit).

    Usage: ``keras_bn.precise_bn.batchnorm_gaps(model, x_val[:256])``
    """
    layers = _batchnorm_layers(model, trainable_only=True)
    if not layers:
        return {}
    watched = tuple(layer for _, layer in layers)
    read = functools.partial(_input_moments, model, watched)
    if keep_traced and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        from keras_bn.callbacks._taps import StepTaps

        # A partial of a module function, not a closure: TensorFlow counts retraces per code object.
        read = StepTaps.of(model).cached("batchnorm_gaps", watched, lambda: tf.function(read, reduce_retracing=True))
    calls = read(keras.tree.map_structure(keras.ops.convert_to_tensor, x))
    gaps = {}
    for (path, layer), per_call in zip(layers, calls):
        if not per_call:
            continue  # not called on `x`: no gap, rather than a zero
        moments = _Moments(layer)
        for n, mean, m2 in per_call:
            moments.merge(*(np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in (n, mean, m2)))
        if moments.count == 0:
            continue
        eps = float(layer.epsilon)
        moving_mean = np.asarray(keras.ops.convert_to_numpy(layer.moving_mean), np.float64)
        moving_std = np.sqrt(np.asarray(keras.ops.convert_to_numpy(layer.moving_variance), np.float64) + eps)
        scale = np.sqrt(moments.variance + eps) / moving_std - 1.0
        shift = (moments.mean - moving_mean) / moving_std
        gaps[path] = float(np.sqrt(np.mean(np.square(scale) + np.square(shift))))
    return gaps


def _input_moments(model, layers, x):
    """Per layer of `layers`, one ``(count, mean, sum of squared deviations)`` per call in an
    inference pass of `model` on `x`, per channel, in float32 (`keras.ops`: traceable)."""
    captured = {id(layer): [] for layer in layers}
    with _capturing(layers, lambda layer, inputs: captured[id(layer)].append(inputs)):
        model(x, training=False)
    result = []
    for layer in layers:
        per_call = []
        for inputs in captured[id(layer)]:
            inputs = keras.ops.cast(inputs, "float32")
            axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
            keep = {a % len(inputs.shape) for a in axis}
            axes = tuple(a for a in range(len(inputs.shape)) if a not in keep)
            mean = keras.ops.mean(inputs, axis=axes, keepdims=True)
            m2 = keras.ops.sum(keras.ops.square(inputs - mean), axis=axes)
            count = keras.ops.cast(keras.ops.size(inputs), "float32") / float(np.prod([inputs.shape[a] for a in keep]))
            per_call.append((count, keras.ops.squeeze(mean, axis=axes), m2))
        result.append(per_call)
    return result
