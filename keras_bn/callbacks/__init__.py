"""Diagnostics callbacks: see in TensorBoard why a deep network trains or does not.

Each callback works with any compiled Keras model in ``model.fit`` (Sequential, Functional,
nested or subclassed, once built). `diagnostics` returns them all, writing one
TensorBoard run laid out like ``keras.callbacks.TensorBoard`` (``<log_dir>/train``,
``<log_dir>/validation``) with a custom-scalars layout (one chart per quantity, one line per
layer). Quantities are read every `every` optimizer steps and at each epoch end, without
overriding ``on_train_batch_end``, so Keras keeps asynchronous dispatch.

Usage::

    cbs = keras_bn.callbacks.diagnostics("logs/run1", probe=x_val[:256], every=100)
    model.fit(x, y, validation_data=(x_val, y_val), epochs=5, callbacks=cbs)
    # tensorboard --logdir logs

Tags (``<layer>`` is the layer's name, ``outer/inner`` inside nested models; "step" is the
optimizer step, "epoch" the epoch index):

==================================== ========== ====== =============================================
tag                                  kind       step   what
==================================== ========== ====== =============================================
``epoch_<metric>`` (train, val. run) scalar     epoch  loss/metrics as keras.callbacks.TensorBoard
``epoch_learning_rate``              scalar     epoch  the optimizer's learning rate
``batch_<metric>``                   scalar     step   running epoch mean of loss/metrics
``grad_norm/<layer>``                scalar     step   L2 norm of the layer's applied gradients
``grad_global/norm``                 scalar     step   global L2 norm of the applied gradients
``grad_norm_preclip/<layer>``        scalar     step   same before clipping (clipping optimizers)
``grad_global/norm_preclip``         scalar     step   global norm before clipping (clipping only)
``grad_global/clip_fraction``        scalar     step   share of steps since last log that clipped
``nonfinite/grad_steps``             scalar     step   steps since last log with NaN/Inf gradients
``update_ratio/<layer>``             scalar     step   ||W_after - W_before|| / ||W_before||, ~1e-3
``activation_mean/<layer>``          scalar     step   mean output on the probe batch
``activation_std/<layer>``           scalar     step   std of the output on the probe batch
``activation_hist/<layer>``          histogram  step   histogram of the output (finite values)
``dead_fraction/<layer>``            scalar     step   ReLU family: share of units <= 0 everywhere
``zero_fraction/<layer>``            scalar     step   ReLU family: share of outputs <= 0
``near_zero_fraction/<layer>``       scalar     step   GELU/SiLU/ELU-like: share with |y| <= 0.05
``saturation/<layer>``               scalar     step   tanh/sigmoid: share of saturated outputs
``preact/<layer>/p15|p50|p85``       scalar     step   tanh/sigmoid layers: input percentiles, unit 0
``nonfinite/activations/<layer>``    scalar     step   NaN/Inf count in the output (then dropped)
``figures/activation_histograms``    image      step   per-layer activation histogram grid (epoch)
``figures/grad_norms``               image      step   per-layer gradient-norm bar chart (epoch)
==================================== ========== ====== =============================================

Every tag except ``epoch_*`` (validation) is in the train run. Non-finite values never crash
a summary: histograms drop them and the ``nonfinite/*`` counts say how many there were.
No callback here stops training; use ``keras.callbacks.TerminateOnNaN`` for that.
`BatchNormCheck` (in the preset) writes no tag: it warns once per BatchNormalization layer
trained on one value per channel (batch size 1). Faults, bad inputs and flushing are
documented in docs/parts/reliability_RELIABILITY.md; `unique_run_dir` gives concurrent runs
their own folders.
"""

from keras_bn.callbacks._runs import unique_run_dir
from keras_bn.callbacks._writer import RunWriters, close_all_writers
from keras_bn.callbacks.activation_stats import ActivationStats
from keras_bn.callbacks.bn_check import BatchNormCheck
from keras_bn.callbacks.gradient_norms import GradientNorms
from keras_bn.callbacks.metrics_logger import MetricsLogger
from keras_bn.callbacks.preset import diagnostics
from keras_bn.callbacks.update_ratio import UpdateRatio

__all__ = [
    "ActivationStats",
    "BatchNormCheck",
    "GradientNorms",
    "MetricsLogger",
    "RunWriters",
    "UpdateRatio",
    "close_all_writers",
    "diagnostics",
    "unique_run_dir",
]
