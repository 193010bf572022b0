"""UpdateTap: each variable's update and weight sums of squares, recorded inside ``apply``.

The JAX path of `keras_bn.callbacks.UpdateRatio`: on JAX the weights are not in the variables
between two steps of an epoch (the jitted step passes them as state; a read syncs the whole
state and a device copy of buffers Keras donates to the next step is needed), so the ratio
``||W_after - W_before|| / ||W_before||`` is measured where both exist: around the optimizer's
own ``apply``, inside the step, with `keras.ops` (two reductions per variable), into the
optimizer state (`keras_bn.callbacks._tap_state`). The host reads it at the callback's cadence:
the ratio of the last step before the read. (On TensorFlow the callback keeps its snapshot of
the weights at the log step, which costs nothing on the other steps.)

Usage (inside a callback)::

    tap = StepTaps.of(model).update_tap(optimizer)
    StepTaps.of(model).register(tap)
    tap.read()   # {"update_sumsq": ..., "weight_sumsq": ..., "fired_steps": ...}
"""

from __future__ import annotations

from keras import ops

from keras_bn.callbacks._tap_state import TapState
from keras_bn.callbacks._patch import set_on_instance

__all__ = ["UpdateTap"]


def _sumsq(x):
    return ops.sum(ops.square(ops.cast(x, "float32")))


class UpdateTap:
    """Records, every step, ``sum((W_after - W_before)**2)`` and ``sum(W_before**2)`` per variable."""

    backends = ("tensorflow", "jax")  # where StepTaps runs it

    def __init__(self, optimizer, variables):
        self.optimizer = optimizer
        self.variables = list(variables)
        self.state = state = TapState()
        size = len(self.variables)
        self.update_sumsq = state.floats("keras_bn_update_sumsq", [size])
        self.weight_sumsq = state.floats("keras_bn_weight_sumsq", [size])
        self.fired_steps = state.counter("keras_bn_update_fired_steps")
        self._undo = None

    def patch(self) -> None:
        if self._undo is not None:
            return
        optimizer = self.optimizer
        original_apply = optimizer.apply

        def apply(grads, trainable_variables=None):
            before = [v.value for v in self.variables]  # inside stateless_apply: this step's values
            result = original_apply(grads, trainable_variables)
            self.record(before, [v.value for v in self.variables])
            return result

        self._undo = set_on_instance(optimizer, "apply", apply)

    def unpatch(self) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    def record(self, before, after) -> None:
        self.update_sumsq.assign(ops.stack([_sumsq(ops.subtract(a, b)) for a, b in zip(after, before)]))
        self.weight_sumsq.assign(ops.stack([_sumsq(b) for b in before]))
        self.fired_steps.assign_add(ops.ones((), self.fired_steps.dtype))

    def read(self) -> dict:
        """Host values (on JAX after a state sync: read ``Callback.model`` first)."""
        numpy = self.state.numpy
        return {"update_sumsq": numpy(self.update_sumsq), "weight_sumsq": numpy(self.weight_sumsq),
                "fired_steps": int(numpy(self.fired_steps))}


