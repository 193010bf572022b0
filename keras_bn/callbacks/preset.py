"""diagnostics(): every keras-bn diagnostics callback in one call, one TensorBoard run.

Usage::

    cbs = keras_bn.callbacks.diagnostics("logs/bn_vs_no_bn/with_bn", probe=x_val[:256], every=100)
    model.fit(x, y, validation_data=(x_val, y_val), epochs=5, callbacks=cbs)
"""

from __future__ import annotations

import os

from keras_bn._validation import check_positive_int
from keras_bn._validation import check_float
from keras_bn.callbacks._base import ReadBudget, check_log_dir
from keras_bn.callbacks._writer import RunWriters
from keras_bn.callbacks.activation_stats import ActivationStats
from keras_bn.callbacks.bn_check import BatchNormCheck
from keras_bn.callbacks.doctor import Doctor
from keras_bn.callbacks.gradient_norms import GradientNorms
from keras_bn.callbacks.metrics_logger import MetricsLogger
from keras_bn.callbacks.update_ratio import UpdateRatio

__all__ = ["diagnostics"]

ACTIVATION_OVERHEAD = 0.02  # the preset's bound on the probe's share of training time
READ_OVERHEAD = 0.01  # the default bound on the step reads' share (`max_read_overhead`)


def diagnostics(
    log_dir,
    probe=None,
    every: int = 100,
    *,
    layers=None,
    figures: bool = True,
    figure_secs: float = 60.0,
    update_ratio: bool = True,
    metrics: bool = True,
    bn_check: bool = True,
    doctor: bool = True,
    flush_secs: float = 5.0,
    max_read_overhead: float | None = READ_OVERHEAD,
    **activation_options,
) -> list:
    """The diagnostics callbacks for `model.fit`, sharing one set of writers in `log_dir`.

    Returns ``[MetricsLogger, GradientNorms, UpdateRatio, BatchNormCheck, ActivationStats]``
    (the last only when a `probe` is given), then a `Doctor` reading what they write
    (`metrics=False` / `update_ratio=False` / `bn_check=False` / `doctor=False` leave those
    out). A `log_dir` that cannot be written raises ValueError here, before any training. With
    `metrics` on, it replaces ``keras.callbacks.TensorBoard`` (same run layout and
    ``epoch_*`` tags) at a fraction of its cost. The tags are listed in `keras_bn.callbacks`.

    Args:
        log_dir: the run directory (``<log_dir>/train``, ``<log_dir>/validation``).
        probe: inputs for the activation statistics, e.g. ``x_val[:256]``; None skips them.
        every: cadence of every per-step quantity, in optimizer steps (all also log at
            each epoch end).
        layers: layers watched by `ActivationStats` (None: every activation layer).
        figures: draw the activation-histogram grid and the gradient-norm chart at an epoch
            end at most every `figure_secs` seconds, and at train end.
        figure_secs: least wall time between two figures (0: every epoch).
        update_ratio: include `UpdateRatio`.
        metrics: include `MetricsLogger` (loss and metrics).
        bn_check: include `BatchNormCheck` (warns once per BatchNormalization layer trained
            on one value per channel, e.g. batch size 1).
        doctor: append `keras_bn.callbacks.Doctor` (the live rules; prints each new finding
            once and writes ``<log_dir>/report.md``).
        flush_secs: every summary is on disk at most this many seconds after it is written
            (and at each epoch end, train end, on a failing step and on SIGTERM).
        max_read_overhead: the largest share of wall time, in (0, 1], the reads of the
            logging steps (loss and metrics, gradient norms, update ratios) may take together;
            a logging step is skipped by all of them while the last one read took more than
            this share of the time since it (`keras_bn.callbacks.ReadBudget`). Default 0.01:
            on a model whose steps take a few ms or more every multiple of `every` is read;
            on a tiny one (the 784-32-32-10 MLP, 0.4 ms a step on a CPU) about every 5th.
            The gradient counts and peak still cover every step. None: every multiple of
            `every` is read, as under multi-worker training (``TF_CONFIG`` set), where every
            worker must read the same steps. Epoch ends always read; the probe has its own budget.
        **activation_options: passed to `ActivationStats` (``bins``, ``tanh_threshold``,
            ``sigmoid_band``, ``max_probe_samples``, ``max_probe_mb``, ``max_overhead``:
            here 0.02 unless given, so the probe takes at most about 2% of training time;
            None reads it on every schedule).

    Example::

        model.fit(x, y, epochs=3, callbacks=keras_bn.callbacks.diagnostics("logs/run1", probe=x[:256]))
    """
    log_dir = check_log_dir(log_dir)  # the one writability check: the callbacks share these writers
    every = check_positive_int("every", every)
    for name, flag in (("figures", figures), ("update_ratio", update_ratio), ("metrics", metrics), ("bn_check", bn_check),
                       ("doctor", doctor)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be True or False. Received: {name}={flag!r}")
    flush_secs = check_float("flush_secs", flush_secs, low=0.0, low_inclusive=False)
    if max_read_overhead is not None:
        max_read_overhead = check_float("max_read_overhead", max_read_overhead, low=0.0, high=1.0, low_inclusive=False)
    # Multi-worker training (TF_CONFIG): every worker must read the same steps, whatever its speed.
    budget = None if max_read_overhead is None or os.environ.get("TF_CONFIG") else ReadBudget(max_read_overhead)
    writers = RunWriters(log_dir, flush_secs=flush_secs)
    callbacks = []
    if metrics:
        callbacks.append(MetricsLogger(log_dir, every, writers=writers, read_budget=budget))
    callbacks.append(GradientNorms(log_dir, every, figures=figures, figure_secs=figure_secs, writers=writers,
                                   read_budget=budget))
    if update_ratio:
        callbacks.append(UpdateRatio(log_dir, every, writers=writers, read_budget=budget))
    if bn_check:
        callbacks.append(BatchNormCheck(log_dir, every, writers=writers))
    if probe is not None:
        activation_options.setdefault("max_overhead", ACTIVATION_OVERHEAD)
        callbacks.append(
            ActivationStats(
                log_dir, probe, every, layers=layers, figures=figures, figure_secs=figure_secs,
                writers=writers, **activation_options,
            )
        )
    elif layers is not None or activation_options:
        given = sorted(activation_options) + (["layers"] if layers is not None else [])
        raise ValueError(
            f"Activation options ({', '.join(given)}) need a `probe` batch. Received: probe=None"
        )
    if doctor:  # last: it evaluates what the others wrote at the same step
        callbacks.append(Doctor(log_dir, every, probe=probe, writers=writers))
    return callbacks
