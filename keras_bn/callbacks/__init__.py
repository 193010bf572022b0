"""Diagnostics callbacks: see in TensorBoard why a deep network trains or does not.

Each callback works with any compiled Keras model in ``model.fit`` (Sequential, Functional,
nested or subclassed, once built). `diagnostics` returns them all, writing one
TensorBoard run laid out like ``keras.callbacks.TensorBoard`` (``<log_dir>/train``,
``<log_dir>/validation``) with a custom-scalars layout (one chart per quantity, one line per
layer). Quantities stay on the device and are read every `every` optimizer steps and at each
epoch end (keras_bn.callbacks._base explains the cadence).

Usage::

    cbs = keras_bn.callbacks.diagnostics("logs/run1", probe=x_val[:256], every=100)
    model.fit(x, y, validation_data=(x_val, y_val), epochs=5, callbacks=cbs)
    # tensorboard --logdir logs

The tags, their steps and what each means are listed once, in docs/diagnostics.md. A custom
training loop calls `record_gradients` inside its step (docs/ARCHITECTURE.md: the taps).

Every tag except ``epoch_*`` (validation) is in the train run. Non-finite values never crash
a summary: histograms drop them and the ``nonfinite/*`` counts say how many there were.
No callback here stops training; use ``keras.callbacks.TerminateOnNaN`` for that.
`BatchNormCheck` (in the preset) writes no tag: it warns once per BatchNormalization layer
trained on one value per channel (batch size 1). Faults, bad inputs and flushing are
documented in docs/RELIABILITY.md; `unique_run_dir` gives concurrent runs their own folders.
"""

import importlib

# public name -> its module; imported on first use (PEP 562), so the writers and the event
# files need neither Keras nor TensorFlow (keras_bn.callbacks._writer imports no Keras).
_LAZY = {
    "ActivationStats": "keras_bn.callbacks.activation_stats",
    "BatchNormCheck": "keras_bn.callbacks.bn_check",
    "Doctor": "keras_bn.callbacks.doctor",
    "GradientNorms": "keras_bn.callbacks.gradient_norms",
    "MetricsLogger": "keras_bn.callbacks.metrics_logger",
    "ReadBudget": "keras_bn.callbacks._base",
    "RunWriters": "keras_bn.callbacks._writer",
    "TimeGradients": "keras_bn.callbacks.time_gradients",
    "UpdateRatio": "keras_bn.callbacks.update_ratio",
    "close_all_writers": "keras_bn.callbacks._writer",
    "diagnostics": "keras_bn.callbacks.preset",
    "record_gradients": "keras_bn.callbacks._gradient_tap",
    "unique_run_dir": "keras_bn.callbacks._runs",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'keras_bn.callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])
