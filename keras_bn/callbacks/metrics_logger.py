"""MetricsLogger: loss and metrics in the same tags as ``keras.callbacks.TensorBoard``.

``epoch_<metric>`` in ``<log_dir>/train`` and ``<log_dir>/validation`` (step = epoch) and
``epoch_learning_rate``, plus ``batch_<metric>`` (the running epoch mean, as Keras logs it)
every `every` optimizer steps. It never overrides ``on_train_batch_end``, so unlike Keras'
callback it keeps asynchronous dispatch (and costs nothing between logs); with it the
diagnostics preset replaces Keras' TensorBoard callback.

The ``batch_*`` values are the logs the latest step's train function returned, the very
values ``fit`` passes to ``on_train_batch_end`` (kept by `keras_bn.callbacks._taps.StepTaps`
without a host read; a custom ``train_step``'s own entries included, scalars only). Where no
step has run through keras-bn's train function since the last write (the callbacks driven by
hand, outside ``fit``), they are computed from the metric variables (``get_metrics_result``).

Usage::

    model.fit(x, y, validation_data=(xv, yv), callbacks=[keras_bn.callbacks.MetricsLogger("logs/run1")])
"""

from __future__ import annotations

import keras
import numpy as np

from keras_bn.callbacks._base import DiagnosticCallback
from keras_bn.callbacks._tap_state import current_values, is_jax, is_tensorflow

__all__ = ["MetricsLogger"]


def _stateless_metrics_result(model, variables):
    """JAX: ``model.get_metrics_result()`` of the metric values given, as NumPy (one jitted
    call; `np.asarray` per value: `jax.device_get` costs more Python than the copies)."""
    import jax

    def result(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return model.get_metrics_result()

    compiled = jax.jit(result)
    return lambda values: jax.tree_util.tree_map(np.asarray, compiled(values))


class MetricsLogger(DiagnosticCallback):
    """Writes ``batch_<metric>`` every `every` steps and ``epoch_<metric>`` at each epoch end.

    Args:
        log_dir: the TensorBoard run directory.
        every: batch-level cadence in optimizer steps.
        writers: shared `RunWriters` (the `diagnostics` preset passes one).
        read_budget: shared `ReadBudget`: the logging steps it skips are not read (the
            `diagnostics` preset passes one; None: every logging step is read).

    Example::

        cb = keras_bn.callbacks.MetricsLogger("logs/run1", every=100)
    """

    _log_step_syncs = False  # the metric variables of the trainer's state

    _needs_built_model = False  # reads only the metrics

    def _attach(self):
        self._logs_call = self._taps.logs_call  # logs of an earlier fit are not this fit's
        if is_jax():  # one jitted call on the metric values of the trainer's state: no sync
            model, variables = self.model, list(self.model.metrics_variables)
            result = self._taps.cached("metrics_result", variables, lambda: _stateless_metrics_result(model, variables))
            self._metrics_result = lambda: result(current_values(self._taps.model(), "metrics_variables", variables))
            self._add_charts()
            return
        if not is_tensorflow():  # PyTorch: eager, as its steps are
            self._metrics_result = self.model.get_metrics_result
            self._add_charts()
            return
        import tensorflow as tf

        # One compiled call for all metric results (eagerly, each result is several ops),
        # traced once per model however many fits and callbacks follow (a recipe may fit one
        # epoch at a time); a recompile with new metrics gets a new one.
        self._metrics_result = self._taps.cached("metrics_result", self.model.metrics_variables,
                                                 lambda: tf.function(self.model.get_metrics_result))
        self._add_charts()

    def _add_charts(self):
        self.writers.add_charts({
            "loss (batch: running epoch mean; epoch: train and validation)": r"(batch|epoch)_loss",
            "metrics (batch and epoch)": r"(batch|epoch)_(?!loss$|learning_rate$).*",
        })

    def on_epoch_end(self, epoch, logs=None):
        # With validation data Keras' fit evaluates before on_epoch_end, and evaluation resets
        # the metrics the model shares: at the epoch end the train values are in `logs` only.
        self._epoch_train_logs = {k: v for k, v in (logs or {}).items() if not k.startswith("val_")}
        try:
            super().on_epoch_end(epoch, logs)
        finally:
            self._epoch_train_logs = None

    def _log_step(self, step):
        train_logs = getattr(self, "_epoch_train_logs", None)
        if train_logs:
            with self.writers.writing("train", step) as write:
                write.scalars({f"batch_{name}": value for name, value in train_logs.items()
                               if name != "learning_rate"})
            return
        metrics = self._step_logs()
        if metrics is None:
            try:
                metrics = self._metrics_result()
            except Exception:  # noqa: BLE001  a get_metrics_result that cannot be traced: read eagerly
                self._metrics_result = self.model.get_metrics_result
                self._taps.forget("metrics_result")
                metrics = self._metrics_result()
        if metrics:
            with self.writers.writing("train", step) as write:
                write.scalars({f"batch_{name}": value for name, value in metrics.items()})

    def _step_logs(self):
        """The scalar entries of the logs the latest train-function call returned, as host
        floats; None when no call has returned logs since the last write."""
        taps = self._taps
        logs = taps.latest_logs
        if logs is None or taps.logs_call == self._logs_call:
            return None
        self._logs_call = taps.logs_call
        values = {}
        for name, value in logs.items():
            try:
                value = np.asarray(value) if is_jax() else keras.ops.convert_to_numpy(value)
            except (TypeError, ValueError):  # a nested entry of a custom train_step: not a scalar
                continue
            if value.size == 1 and value.dtype.kind in "fiub":
                values[name] = float(value.reshape(()))
        return values

    def _log_epoch(self, epoch, step, logs):
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        validation = {k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_")}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and "learning_rate" not in train:
            try:
                rate = optimizer.learning_rate  # a Variable, or a schedule's value (a tensor)
                train["learning_rate"] = float(np.asarray(getattr(rate, "value", rate)))
            except (AttributeError, TypeError, ValueError):
                pass
        for run, values in (("train", train), ("validation", validation)):
            if values:
                with self.writers.writing(run, epoch) as write:
                    write.scalars({f"epoch_{name}": value for name, value in values.items()})
