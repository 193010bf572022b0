"""UpdateRatio: ||W_after - W_before|| / ||W_before|| per layer for one real training step.

CS231n's babysitting rule (SEEDS §7): the ratio of the update's size to the weights' size
should be **around 1e-3**; much lower means the learning rate is too small, much higher
(1e-1 and up) that it is too large. The ratio is measured on the weights themselves, so it is
the true ratio for any optimizer (Adam's step is not ``lr * grad``).

How: one batch before each logging step (a multiple of `every`; one ``train_function`` call,
i.e. one step or ``steps_per_execution`` steps), the callback keeps a device copy of the
trainable weights; at the logging batch or at the epoch end it compares them with the current
weights in one compiled reduction and logs only per-layer numbers, at that step. So
``update_ratio/*`` at step s is the update of the steps just before s (step s itself with one
step per call), the step whose gradients ``grad_norm/*`` logs at s, and the comparison's host
read falls in the batch where the other callbacks read anyway. If no copy was kept before a
logging step (the copy failed), one is kept there and compared at the next batch, and that
ratio is logged at the later step. No other step is touched.

The same on every backend, with the same tags and the same steps. On JAX the weights live in
the jitted step's state inside an epoch: the snapshot copies them from there (Keras donates the
state's buffers to the next step) and the comparison reads them there, so nothing syncs the
whole state and nothing runs in the training step itself. On PyTorch the snapshot is a copy too (torch's
optimizers update the weights in place).

Usage::

    cb = keras_bn.callbacks.UpdateRatio("logs/run1", every=100)
"""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_bn.callbacks._base import DiagnosticCallback, ReadBudget
from keras_bn.callbacks._layers import group_norms, variable_groups
from keras_bn.callbacks._tap_state import current_values, is_jax, is_tensorflow
from keras_bn.callbacks._writer import RunWriters

__all__ = ["UpdateRatio"]

GUIDE_LINE = 1e-3  # CS231n: update / weight magnitude should be around this


def _update_sumsq(before, after):
    """One float32 array of shape ``[2, variables]`` (one host transfer): row 0 each variable's
    ``sum((after - before)**2)``, row 1 its ``sum(before**2)``."""
    after = [ops.stop_gradient(a) for a in after]  # PyTorch: no autograd graph for a read
    diff = [ops.sum(ops.square(ops.cast(a - b, "float32"))) for a, b in zip(after, before)]
    base = [ops.sum(ops.square(ops.cast(b, "float32"))) for b in before]
    return ops.stack([ops.stack(diff), ops.stack(base)])


def _copies(values):
    """New device buffers holding `values` (compiled on JAX: one call, where eager copies of the
    variables cost a dispatch each; the output is computed, so it never aliases an input that
    Keras donates to the next step)."""
    return [ops.add(v, ops.zeros((), v.dtype)) for v in values]


def _compiled_update_sumsq():
    """`_update_sumsq` compiled for the backend (PyTorch: eager, its steps are too)."""
    if is_tensorflow():
        import tensorflow as tf

        return tf.function(_update_sumsq)
    if is_jax():
        import jax

        return jax.jit(_update_sumsq)
    return _update_sumsq


class UpdateRatio(DiagnosticCallback):
    """Logs ``update_ratio/<layer>`` = ||dW|| / ||W|| of one training step every `every` steps.

    Args:
        log_dir: the TensorBoard run directory (``<log_dir>/train`` is written).
        every: measure every this many optimizer steps (the update of that step).
        writers: shared `RunWriters` (the `diagnostics` preset passes one).
        read_budget: shared `ReadBudget`: the logging steps it skips are not read (the
            `diagnostics` preset passes one; None: every logging step is read).

    Example::

        model.fit(x, y, callbacks=[keras_bn.callbacks.UpdateRatio("logs/run1", every=50)])
    """

    _log_step_syncs = False  # the weights of the trainer's state (`_current_weights`)

    def __init__(self, log_dir, every: int = 100, *, writers: RunWriters | None = None,
                 read_budget: ReadBudget | None = None):
        super().__init__(log_dir, every, writers=writers, read_budget=read_budget)
        self._before = None
        self._reduce = None
        self._batch_steps = 1

    def _attach(self):
        self._before = None
        self._batch_steps = int(self.model.steps_per_execution)  # Keras' batch index counts steps
        self.writers.add_charts({"update / weight ratio per layer (guide line 1e-3)": r"update_ratio/.*"})
        self._weights = list(self.model.trainable_variables)
        self._layer_names, self._groups = variable_groups(self.model)
        # One traced reduction per model and variable list, kept across fits and callbacks.
        self._reduce = self._taps.cached("update_ratio", self._weights, _compiled_update_sumsq)
        if is_jax():
            import jax

            self._copy = self._taps.cached("update_ratio_copy", self._weights, lambda: jax.jit(_copies))

    def _detach(self):
        self._before = None

    def _current_weights(self) -> list:
        return current_values(self._taps.model(), "trainable_variables", self._weights)

    def _snapshot(self):
        if is_jax():
            return self._copy(self._current_weights())
        if not is_tensorflow():  # a copy: torch updates the weights in place
            return [ops.copy(ops.stop_gradient(v.value)) for v in self._weights]
        import tensorflow as tf

        return [tf.identity(v.value) for v in self._weights]

    def _finish(self, step):
        """Log the ratio of the step since the snapshot, if one is pending."""
        before, self._before = self._before, None  # a failed comparison leaves no stale snapshot
        if before is None:
            return
        diff, base = ops.convert_to_numpy(self._reduce(before, self._current_weights()))
        self._write(step, diff, base)

    def _write(self, step, diff, base):
        count = len(self._layer_names)
        update = group_norms(diff, self._groups, count)
        weight = group_norms(base, self._groups, count)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = update / weight
        with self.writers.writing("train", step) as write:
            write.scalars({f"update_ratio/{n}": r for n, r in zip(self._layer_names, ratios)})

    def _schedule(self):
        """Wake one batch (``steps_per_execution`` steps) before the next logging step for the
        snapshot, or, with a snapshot pending, at the next batch (set in `_batch_due`)."""
        super()._schedule()
        if self._before is None:
            self._due_batch -= self._batch_steps

    def _batch_due(self, batch):
        step = self._steps_at_epoch_start + batch
        measured = self._before is not None
        if measured:  # the step(s) since the snapshot: this batch's logging step
            self._run_budgeted(self._finish, step)
        read = super()._batch_due(batch)  # the logging step's bookkeeping, then `_schedule`
        if self._reduce is None:
            return read
        # Snapshot one batch before the next logging step (unless the read budget skips that
        # step), or now if a logging step was read with nothing measured.
        if read and not measured:
            snapshot = True
        elif self._due_batch <= batch:
            upcoming = self._next_log_step()
            snapshot = self._read_allowed(upcoming)
            if not snapshot:  # skipped: wake one batch before the logging step after it
                self._last_scheduled_step = upcoming
                self._schedule()
        else:
            snapshot = False
        if snapshot:
            self._run_budgeted(self._take_snapshot)
            if self._before is not None:
                self._due_batch = batch + 1
        return read

    def _take_snapshot(self):
        self._before = self._snapshot()

    def on_epoch_end(self, epoch, logs=None):
        if self._before is not None:
            self._run_safely(self._finish, self._optimizer_step())
        super().on_epoch_end(epoch, logs)
        self._before = None  # a snapshot kept over the epoch end would span the next epoch's start
