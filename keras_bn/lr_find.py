"""The learning-rate range test (Smith 2015; fastai's ``lr_find``), the finder keras#8891 asked for.

Train for `steps` mini-batches while the learning rate rises exponentially from `min_lr` to
`max_lr`; smooth the loss with a bias-corrected exponential moving average and stop once the
smoothed loss passes `stop_factor` x its best (or turns non-finite). A suggestion rule reads
a learning rate off the curve:

- `minimum_div_10` (default): a tenth of the learning rate at the smoothed minimum, the rule
  of thumb "just before the loss blows up, divided by ten";
- `steepest`: where the smoothed loss falls fastest per decade of learning rate, before the
  minimum.

Rules are plain functions ``rule(lrs, smoothed) -> lr``; pass your own as ``rule=``.

The test trains a **copy**: a model passed in is cloned (``keras.models.clone_model`` plus its
weights) and compiled with a fresh optimizer built from its own optimizer's config, so the
model's weights, BatchNorm statistics and optimizer state are left exactly as they were. A
`model_fn` is called for a new model.

Usage::

    result = keras_bn.lr_find.lr_find(lambda: keras_bn.build_dense((784,), [32, 32], 10), (x, y))
    result.suggestion, result.rule
    keras_bn.lr_find.plot({"no BN": r1, "BN": r2}, "lr_find.png")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np

from keras_bn._registry import Registry
from keras_bn._training import make_model, stream_batches
from keras_bn._validation import check_float, check_positive_int

__all__ = ["LRFindResult", "RULES", "lr_find", "minimum_div_10", "plot", "steepest"]


class LRFindResult(NamedTuple):
    """The range test's curve and suggestion.

    lrs, losses, smoothed: per step, the learning rate, the batch loss and its smoothed value.
    suggestion: the suggested learning rate; rule: the name of the rule that gave it.
    suggestions: every built-in rule's answer, by name.
    stopped_at: the step the smoothed loss passed `stop_factor` x its best (None: ran all steps).
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    rule: str
    suggestions: dict
    stopped_at: int | None


def minimum_div_10(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """A tenth of the learning rate at the lowest smoothed loss."""
    return float(lrs[int(np.nanargmin(smoothed))] / 10.0)


def steepest(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """The learning rate where the smoothed loss falls fastest in log(lr), before its minimum.

    The first tenth of the points is skipped: there the average holds only a few noisy batches.
    """
    start, end = len(smoothed) // 10, int(np.nanargmin(smoothed)) + 1
    if end - start < 3:
        return float(lrs[0])
    slope = np.gradient(smoothed[start:end], np.log10(lrs[start:end]))
    return float(lrs[start + int(np.nanargmin(slope))])


RULES: Registry[Callable] = Registry(
    "rule", {"minimum_div_10": minimum_div_10, "steepest": steepest},
    aliases={"minimum/10": "minimum_div_10", "min_div_10": "minimum_div_10", "steep": "steepest"},
)


def _work_copy(model_fn_or_model):
    """A model to train, with its loss and optimizer config (the original left untouched)."""
    from keras_bn.optimizers import adam

    if isinstance(model_fn_or_model, keras.Model):
        source = model_fn_or_model
        work = keras.models.clone_model(source)
        work.set_weights(source.get_weights())
    else:
        source = work = make_model(model_fn_or_model)
    if getattr(source, "compiled", False) and source.optimizer is not None:
        return work, source.loss, source.optimizer.get_config(), type(source.optimizer)
    optimizer = adam()
    return work, "sparse_categorical_crossentropy", optimizer.get_config(), type(optimizer)


def lr_find(model_fn_or_model, data, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100, *,
            batch_size: int = 64, beta: float = 0.9, stop_factor: float = 4.0,
            rule: str | Callable = "minimum_div_10", log_dir=None, plot_path=None,
            seed: int = 0) -> LRFindResult:
    """Run the learning-rate range test; see the module docstring.

    Args:
        model_fn_or_model: a ``keras.Model`` (a copy is trained; compiled or not) or a
            callable returning a new one. Uncompiled models get ``keras_bn.optimizers.adam()``
            and sparse categorical cross-entropy; compiled ones their own loss and optimizer
            class and settings (clipping included), with the learning rate driven here.
        data: what ``model.fit`` takes: a `keras_bn.data.Dataset`-like object
            (standardized), ``(x, y)`` or ``(x, y, x_val, y_val)`` (only the training split
            is used; shuffled batches of `batch_size`), or a ``tf.data.Dataset``,
            ``keras.utils.PyDataset`` or generator of ``(x, y)`` batches (their own batches,
            in order; a dataset is passed over again when `steps` needs more batches, a
            generator that ends first is an error).
        min_lr, max_lr, steps: the exponential ramp, one learning rate per mini-batch.
        batch_size: mini-batch size.
        beta: the EMA factor of the smoothing (bias-corrected like Adam's moments). The
            default 0.9 lags about 9 steps; fastai's 0.98 lags about 49, which over 100 steps
            and 8 decades puts the smoothed minimum some 4 decades late (measured here: it
            suggested 0.13-0.19 for the BN MLP, where 0.9 gives 0.02-0.05).
        stop_factor: stop once the smoothed loss exceeds this x its best so far.
        rule: a name in `RULES` ("minimum_div_10", "steepest") or a ``(lrs, smoothed) -> lr``.
        log_dir: write the curve to TensorBoard there (scalars ``lr_find/loss``,
            ``lr_find/smoothed_loss``, ``lr_find/learning_rate`` by step, and a text
            ``lr_find/suggestion``).
        plot_path: save a PNG of the curve there.

    Usage: ``lr_find(model, (x, y), steps=100, log_dir="logs/lr_find").suggestion``
    """
    min_lr = check_float("min_lr", min_lr, low=0.0, low_inclusive=False)
    max_lr = check_float("max_lr", max_lr, low=0.0, low_inclusive=False)
    if max_lr <= min_lr:
        raise ValueError(f"`max_lr` must be greater than `min_lr`={min_lr:g}. Received: max_lr={max_lr:g}")
    steps = check_positive_int("steps", steps)
    if steps < 2:
        raise ValueError(f"`steps` must be >= 2 to ramp the learning rate. Received: steps={steps}")
    batch_size = check_positive_int("batch_size", batch_size)
    beta = check_float("beta", beta, low=0.0, high=1.0, high_inclusive=False)
    stop_factor = check_float("stop_factor", stop_factor, low=1.0, low_inclusive=False)
    rule_name, rule_fn = (getattr(rule, "__name__", "custom"), rule) if callable(rule) else (RULES.canonical(rule), RULES.get(rule))
    work, loss, opt_config, opt_class = _work_copy(model_fn_or_model)
    optimizer = opt_class.from_config({**opt_config, "learning_rate": min_lr})
    work.compile(optimizer=optimizer, loss=loss)
    schedule = min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))
    lrs, losses, smoothed = [], [], []
    average, best, stopped_at = 0.0, math.inf, None
    for i, (xb, yb) in enumerate(stream_batches(data, batch_size, steps, seed)):
        optimizer.learning_rate = float(schedule[i])
        batch_loss = float(work.train_on_batch(xb, yb, return_dict=True)["loss"])
        average = beta * average + (1 - beta) * batch_loss
        value = average / (1 - beta ** (i + 1))
        lrs.append(float(schedule[i]))
        losses.append(batch_loss)
        smoothed.append(value)
        if not math.isfinite(value) or value > stop_factor * best:
            stopped_at = i
            break
        best = min(best, value)
    lrs, losses, smoothed = (np.asarray(a, dtype=float) for a in (lrs, losses, smoothed))
    finite = np.isfinite(smoothed)
    suggestions = {name: float(RULES.get(name)(lrs[finite], smoothed[finite])) for name in RULES.names()}
    suggestion = float(rule_fn(lrs[finite], smoothed[finite])) if callable(rule) else suggestions[rule_name]
    result = LRFindResult(lrs, losses, smoothed, suggestion, rule_name, suggestions, stopped_at)
    if log_dir is not None:
        try:
            _write_tensorboard(result, log_dir)
        except Exception as error:  # noqa: BLE001  the measured curve is returned whatever the disk does
            import warnings

            warnings.warn(f"lr_find could not write to log_dir={str(log_dir)!r}: {error!r}", RuntimeWarning, stacklevel=2)
    if plot_path is not None:
        plot(result, plot_path)
    return result


def _write_tensorboard(result: LRFindResult, log_dir) -> None:
    """The curve as TensorBoard scalars and the suggestion as text (no TensorFlow needed)."""
    import time

    from keras_bn import _keras_internals as internals
    from keras_bn.events import EventFileWriter

    writer = EventFileWriter(log_dir)
    try:
        for step, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed)):
            writer.add_scalars(step, {"lr_find/learning_rate": lr, "lr_find/loss": loss, "lr_find/smoothed_loss": smooth})
        text = (f"{result.suggestion:.3g} (rule {result.rule}); all rules: "
                + ", ".join(f"{k} {v:.3g}" for k, v in result.suggestions.items()))
        summary = internals.tensorboard_text_summary("lr_find/suggestion", text)
        writer.add(internals.tensorboard_event_class()(wall_time=time.time(), step=0, summary=summary))
    finally:
        writer.close()


def plot(results, path, title: str = "learning-rate range test"):
    """Save a PNG of one `LRFindResult`, a list of them (labelled ``run 1``, ``run 2``, ...) or
    a ``{label: result}`` dict: the raw loss (faint), the smoothed loss, and a dot at each
    suggestion, on a log learning-rate axis.

    Usage: ``plot({"no BN": r1, "BN": r2}, "logs/lr_finder/lr_finder.png")``; ``plot([r1, r2], path)``
    """
    import matplotlib.pyplot as plt

    if isinstance(results, LRFindResult):
        results = {"loss": results}
    elif isinstance(results, (list, tuple)):
        results = {f"run {i}": r for i, r in enumerate(results, 1)}
    if not isinstance(results, dict) or not results or not all(isinstance(r, LRFindResult) for r in results.values()):
        raise TypeError("`results` must be an LRFindResult, a non-empty list of them or a {label: LRFindResult} "
                        f"dict. Received: results={type(results).__name__}")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    top = []
    for label, result in results.items():
        line, = ax.semilogx(result.lrs, result.smoothed, label=f"{label} (suggests {result.suggestion:.2g})")
        ax.semilogx(result.lrs, result.losses, color=line.get_color(), alpha=0.25, linewidth=0.8)
        index = int(np.argmin(np.abs(np.log(result.lrs) - math.log(result.suggestion))))
        ax.plot(result.suggestion, result.smoothed[index], "o", color=line.get_color())
        finite = result.smoothed[np.isfinite(result.smoothed)]
        top.append(finite[0] * 1.5 if len(finite) else 1.0)
    ax.set_ylim(0, max(top))
    ax.set(title=title, xlabel="learning rate", ylabel="training loss (smoothed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
