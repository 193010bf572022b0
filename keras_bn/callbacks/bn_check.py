"""BatchNormCheck: warn once per layer when BatchNormalization trains on one value per channel.

With batch size 1 (a Dense input, or a last partial batch of 1) a BatchNormalization layer in
training mode normalises each channel over a single value: the batch variance is exactly 0,
every output equals ``beta`` and ``gamma`` gets no gradient. Keras trains on silently.

How, without a host sync per step: at train begin the callback wraps ``call`` of each
trainable BatchNormalization layer on the instance (restored at train end or when a step
raises) and rebuilds the train function, so every training step stores, inside the compiled
step, the smallest number of values any channel was normalised over into one ``tf.Variable``
per layer (the batch size, or a product of the input shape, and an ``assign``; nothing
where the static shape shows more than one value per channel, as after any conv larger than
1x1). The host reads those variables every `every` steps and at each epoch end, as the other
callbacks read theirs, and warns (``UserWarning`` starting with ``"keras_bn"``) once per
layer when the count was 1. It writes nothing to TensorBoard. Under a tf.distribute strategy
it does nothing.

Usage::

    model.fit(x, y, batch_size=1, callbacks=[keras_bn.callbacks.BatchNormCheck("logs/run1")])
    # UserWarning: keras_bn: BatchNormalization layer 'block1_bn' normalised each channel over 1 value ...
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_bn.callbacks._base import DiagnosticCallback
from keras_bn.callbacks._layers import iter_layers

NO_COUNT = 2**62  # "no training call seen yet"


class BatchNormCheck(DiagnosticCallback):
    """Warns once per layer when a BatchNormalization layer trained on one value per channel.

    Args:
        log_dir: the run directory (nothing is written; kept for a uniform signature).
        every: read the per-layer counts every this many optimizer steps (and at epoch end).
        writers: shared `RunWriters` (the `diagnostics` preset passes one).

    Example::

        cb = keras_bn.callbacks.BatchNormCheck("logs/run1")
    """

    def __init__(self, log_dir, every: int = 100, *, writers=None):
        super().__init__(log_dir, every, writers=writers)
        self.warned: set[str] = set()
        self._counts: dict = {}
        self._traced: set[str] = set()  # layers whose traced step records a count
        self._wrapped: list = []

    def _attach(self):
        import tensorflow as tf

        self._counts, self._traced, self._wrapped = {}, set(), []
        strategy = getattr(self.model, "distribute_strategy", None) or tf.distribute.get_strategy()
        if type(strategy).__name__ != "_DefaultDistributionStrategy":
            return  # replica-local counts would need a mirrored variable: not checked there
        for path, layer in iter_layers(self.model):
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
                count = tf.Variable(tf.constant(NO_COUNT, tf.int64), trainable=False, name="keras_bn_bn_count")
                self._counts[path] = count
                self._wrap(path, layer, count)
        if self._wrapped:
            self.model.make_train_function(force=True)  # trace the step with the wrappers in place

    def _wrap(self, path, layer, count):
        import tensorflow as tf

        had_own = "call" in vars(layer)
        original = layer.call

        def call(inputs, *args, **kwargs):
            training = kwargs.get("training", args[0] if args else None)
            if training is True and layer.trainable:
                values = _values_per_channel(inputs, _axes(layer))
                if values is not None:
                    self._traced.add(path)  # at trace time: only these counts are worth reading
                    count.assign(tf.minimum(count, values))
            return original(inputs, *args, **kwargs)

        layer.call = call
        self._wrapped.append((layer, had_own, original))

    def _detach(self):
        for layer, had_own, original in self._wrapped:
            if had_own:
                layer.call = original
            else:
                vars(layer).pop("call", None)
        if self._wrapped:
            self.model.train_function = None  # the next fit traces a clean step
        self._wrapped = []

    def _log_step(self, step):
        for path in sorted(self._traced - self.warned):
            if int(self._counts[path].numpy()) == 1:
                self.warned.add(path)
                warnings.warn(
                    f"keras_bn: BatchNormalization layer {path!r} normalised each channel over 1 "
                    f"value in a training step (batch size 1, by step {step}): its batch variance "
                    f"is 0, so it outputs beta and gamma learns nothing. Use batches of 2 or more "
                    f"(drop_remainder=True for a last batch of 1) or a LayerNormalization / "
                    f"GroupNormalization layer.",
                    UserWarning,
                    stacklevel=2,
                )


def _values_per_channel(inputs, channel_axes):
    """How many values each channel is normalised over: a scalar tensor, or None when the
    static shape already shows it is more than 1 (then the step needs no op at all, e.g. any
    conv feature map larger than 1x1)."""
    import tensorflow as tf

    rank = len(inputs.shape)
    channel_axes = {axis % rank for axis in channel_axes}
    reduced = [axis for axis in range(rank) if axis not in channel_axes]
    known = [inputs.shape[axis] for axis in reduced if inputs.shape[axis] is not None]
    if int(np.prod(known)) > 1:
        return None
    unknown = [axis for axis in reduced if inputs.shape[axis] is None]
    if unknown == [0]:  # the usual case: a Dense input, only the batch size is dynamic
        return tf.shape(inputs, out_type=tf.int64)[0]
    return tf.reduce_prod(tf.gather(tf.shape(inputs, out_type=tf.int64), reduced))


def _axes(layer) -> list[int]:
    axis = layer.axis
    return list(axis) if isinstance(axis, (list, tuple)) else [axis]
