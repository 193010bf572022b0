"""BatchNormCheck: warn once per layer when BatchNormalization trains on one value per channel.

With batch size 1 (a Dense input, or a last partial batch of 1) a BatchNormalization layer in
training mode normalises each channel over a single value: the batch variance is exactly 0,
every output equals ``beta`` and ``gamma`` gets no gradient. Keras trains on silently.

How, without a host sync per step: the callback registers a tap with the model's `StepTaps`
(keras_bn.callbacks._taps), which wraps ``call`` of each trainable BatchNormalization layer on
the instance only while a step of ``fit`` runs and traces the step with it once, so every
training step stores, inside the compiled step, the smallest number of values any channel was normalised over into one ``tf.Variable``
per layer (the batch size, or a product of the input shape, and an ``assign``; nothing
where the static shape shows more than one value per channel, as after any conv larger than
1x1). The host reads those variables every `every` steps and at each epoch end, as the other
callbacks read theirs, and warns (``UserWarning`` starting with ``"keras_bn"``) once per
layer when the count was 1. It writes nothing to TensorBoard. Under a tf.distribute strategy
it does nothing. Where the traced shape fixes the count (always on JAX, whose jitted step is
traced per input shape, e.g. again for a last batch of 1; and on PyTorch, whose eager step has
concrete shapes) it is recorded from the shape, with no op in the step at all.

Usage::

    model.fit(x, y, batch_size=1, callbacks=[keras_bn.callbacks.BatchNormCheck("logs/run1")])
    # UserWarning: keras_bn: BatchNormalization layer 'block1_bn' normalised each channel over 1 value ...
"""

from __future__ import annotations


import keras
import numpy as np

from keras_bn import _warnings
from keras_bn.callbacks._base import DiagnosticCallback
from keras_bn.callbacks._layers import iter_layers
from keras_bn.callbacks._tap_state import is_tensorflow
from keras_bn.distribute import is_distributed
from keras_bn.callbacks._patch import set_on_instance

__all__ = ["BatchNormCheck"]

NO_COUNT = 2**62  # "no training call seen yet"


class _BatchNormCountTap:
    """One int64 variable per trainable BatchNormalization layer: the smallest number of values
    a channel was normalised over in a training step (`NO_COUNT` before the first)."""

    backends = ("tensorflow", "jax", "torch")  # where StepTaps runs it

    def __init__(self, layers: dict):
        self.layers = layers  # path -> layer
        self.counts = {}  # path -> tf.Variable, for counts only the running step knows (TensorFlow)
        if is_tensorflow():
            import tensorflow as tf

            self.counts = {path: tf.Variable(tf.constant(NO_COUNT, tf.int64), trainable=False, name="keras_bn_bn_count")
                           for path in layers}
        self.static: dict[str, int] = {}  # path -> count fixed by a traced (hence run) shape
        self.traced: set[str] = set()  # layers whose traced step records a count
        self._undo: list = []

    def count(self, path: str) -> int:
        """The fewest values a channel of layer `path` was normalised over (`NO_COUNT`: none seen)."""
        value = self.static.get(path, NO_COUNT)
        if path in self.counts:
            value = min(value, int(self.counts[path].numpy()))
        return value

    def patch(self) -> None:
        for path, layer in self.layers.items():
            self._undo.append(self._wrap(path, layer))

    def unpatch(self) -> None:
        undo, self._undo = self._undo, []
        for restore in reversed(undo):
            restore()

    def _wrap(self, path, layer):
        if is_tensorflow():
            import tensorflow as tf

        original = layer.call
        count = self.counts.get(path)

        def call(inputs, *args, **kwargs):
            training = kwargs.get("training", args[0] if args else None)
            if training is True and layer.trainable:
                values = _values_per_channel(inputs, _axes(layer))
                if isinstance(values, int):  # the traced shape fixes it: no op in the step
                    self.traced.add(path)
                    self.static[path] = min(self.static.get(path, NO_COUNT), values)
                elif values is not None:
                    self.traced.add(path)  # at trace time: only these counts are worth reading
                    count.assign(tf.minimum(count, values))
            return original(inputs, *args, **kwargs)

        return set_on_instance(layer, "call", call)


class BatchNormCheck(DiagnosticCallback):
    """Warns once per layer when a BatchNormalization layer trained on one value per channel.

    Args:
        log_dir: the run directory (nothing is written; kept for a uniform signature).
        every: read the per-layer counts every this many optimizer steps (and at epoch end).
        writers: shared `RunWriters` (the `diagnostics` preset passes one).

    Example::

        cb = keras_bn.callbacks.BatchNormCheck("logs/run1")
    """

    _log_step_syncs = False  # its counts are traced shapes or TensorFlow variables

    def __init__(self, log_dir, every: int = 100, *, writers=None):
        super().__init__(log_dir, every, writers=writers)
        self.warned: set[str] = set()
        self._tap = None

    def _attach(self):
        self._tap = None
        if is_distributed(getattr(self.model, "distribute_strategy", None)):
            return  # replica-local counts would need a mirrored variable: not checked there
        layers = {path: layer for path, layer in iter_layers(self.model)
                  if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable}
        if layers:
            key = ("batchnorm_counts", tuple((path, id(layer)) for path, layer in layers.items()))
            self._tap = self._taps.shared(key, lambda: _BatchNormCountTap(layers))
            self._taps.register(self._tap)

    def _detach(self):
        pass  # the tap stays with the model (its traced step is reused); nothing is patched now

    def counts(self) -> dict[str, int]:
        """Per watched layer, the fewest values a channel was normalised over in a training
        step so far (`NO_COUNT` if none was recorded)."""
        if self._tap is None:
            return {}
        return {path: self._tap.count(path) for path in self._tap.layers}

    def _log_step(self, step):
        if self._tap is None:
            return
        for path in sorted(self._tap.traced - self.warned):
            if self._tap.count(path) == 1:
                self.warned.add(path)
                _warnings.warn(
                    f"keras_bn: BatchNormalization layer {path!r} normalised each channel over 1 "
                    f"value in a training step (batch size 1, by step {step}): its batch variance "
                    f"is 0, so it outputs beta and gamma learns nothing. Use batches of 2 or more "
                    f"(drop_remainder=True for a last batch of 1) or a LayerNormalization / "
                    f"GroupNormalization layer.",
                    UserWarning,
                )


def _values_per_channel(inputs, channel_axes):
    """How many values each channel is normalised over: an int when the static shape fixes it,
    a scalar tensor, or None when the static shape already shows it is more than 1 (then the
    step needs no op at all, e.g. any conv feature map larger than 1x1)."""
    rank = len(inputs.shape)
    channel_axes = {axis % rank for axis in channel_axes}
    reduced = [axis for axis in range(rank) if axis not in channel_axes]
    known = [inputs.shape[axis] for axis in reduced if inputs.shape[axis] is not None]
    if int(np.prod(known)) > 1:
        return None
    unknown = [axis for axis in reduced if inputs.shape[axis] is None]
    if not unknown:
        return int(np.prod(known))
    import tensorflow as tf  # only TensorFlow traces with unknown dimensions

    if unknown == [0]:  # the usual case: a Dense input, only the batch size is dynamic
        return tf.shape(inputs, out_type=tf.int64)[0]
    return tf.reduce_prod(tf.gather(tf.shape(inputs, out_type=tf.int64), reduced))


def _axes(layer) -> list[int]:
    axis = layer.axis
    return list(axis) if isinstance(axis, (list, tuple)) else [axis]
