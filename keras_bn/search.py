"""Random and grid search on one trial budget, coarse then fine, in TensorBoard's HParams dashboard.

The babysitting advice of SEEDS §7, made runnable:

- **random beats grid**: `random_search` samples every trial afresh (log-uniform for a
  ``Range(..., log=True)``), so 9 trials try 9 learning rates; `grid_search` on the same
  budget tries only 3 per axis of a 2-D space (``result.distinct_values("learning_rate")``);
- **coarse then fine**: `coarse_to_fine` runs a random search, then `refine` narrows each
  range to the span of the best trials (widened by a margin, clipped to the coarse range, so
  it lies inside it and holds the best coarse trial) and searches again;
- **the edge**: a warning (and ``result.edge_warnings``) when the best value of a range sits in
  its outer 10% (in log space for log ranges): the optimum may lie outside;
- **kill diverging trials**: each trial trains under `keras_bn.sanity.LossGuard` (stop at
  3x the initial loss or NaN) and ranks last.

Trials rank by `objective`, in keras-tuner's convention: a key of the fit logs (``"val_loss"``,
the default, ``"val_<metric>"``, ``"loss"``) whose direction is inferred as keras-tuner infers
it (``min`` for losses and error metrics, ``max`` for accuracy, AUC, precision, recall, R^2,
IoU ...), or an ``Objective(name, "min" | "max")``. A model that `model_fn` compiled keeps its
own loss and metrics (an uncompiled one gets sparse cross-entropy and accuracy).

Every trial is a run ``<log_dir>/<stage>_<nn>/`` with its hyperparameters
(``tensorboard.plugins.hparams.api.hparams``) and per-epoch scalars of every key its fit
logged plus ``diverged``, and ``<log_dir>`` holds the ``hparams_config``, so the HParams
dashboard lists, sorts and plots all trials. `SearchResult.table` prints the same trials;
`SearchResult.save` writes them as CSV or Markdown.

Why by hand, not keras-tuner or Optuna: the search itself is ~40 lines (sampling, a grid, a
narrowed range), while what this module is for (an equal-budget grid, ranges refined *inside*
the coarse ones, the edge warning, the 3x kill rule, one HParams run per trial) is not what
either library does. keras-tuner writes TensorBoard runs but keeps its own oracle state on
disk and has no coarse-to-fine step; Optuna samples well (its samplers and pruners are the
better choice for large searches) but logs nothing to TensorBoard and would be a new
dependency for a few dozen lines. The trials here are plain ``model.fit`` calls, so moving to
Optuna later means replacing `_sample` only.

Usage::

    space = {"learning_rate": Range(1e-5, 1e-1), "dropout": Range(0.0, 0.5, log=False)}
    def model_fn(hp):
        model = keras_bn.build_dense((784,), [32, 32], 10, dropout=hp["dropout"])
        model.compile(keras_bn.optimizers.adam(learning_rate=hp["learning_rate"]),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
    result = random_search(model_fn, space, (x, y, x_val, y_val), trials=9, log_dir="logs/search",
                           objective="val_accuracy")
    print(result.table()); result.best.hparams
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from keras_bn._search_types import (Choice, Objective, Range, SearchResult, Trial, _check_space, _grid, _sample,
                                    infer_direction)
from keras_bn._training import compiled, data_kind, holdout, is_compiled, iterate_batches, make_model, split_data
from keras_bn._validation import check_float, check_positive_int

__all__ = ["Choice", "Objective", "Range", "SearchResult", "Trial", "coarse_to_fine", "edge_warnings",
           "grid_search", "infer_direction", "random_search", "refine"]


class _HParamsLog:
    """The HParams dashboard files: the config in `root` (written with the first trial, once the
    logged keys are known), one run per trial."""

    def __init__(self, root, space: dict):
        from tensorboard.plugins.hparams import api as hp

        self.root, self.hp = Path(root), hp
        self.hparams = {name: hp.HParam(name, param.domain()) for name, param in space.items()}
        self.configured = False

    def _configure(self, trial: Trial) -> None:
        metrics = list(dict.fromkeys([trial.objective.name, *trial.metrics, "diverged"]))
        summary = self.hp.hparams_config_pb(hparams=list(self.hparams.values()),
                                            metrics=[self.hp.Metric(m, display_name=m) for m in metrics])
        _write_events(self.root, summary)
        self.configured = True

    def write(self, trial: Trial, history: dict) -> None:
        if not self.configured:
            self._configure(trial)
        summary = self.hp.hparams_pb({self.hparams[k]: v for k, v in trial.hparams.items() if k in self.hparams},
                                     trial_id=trial.trial_id)
        scalars = []
        for epoch in range(trial.epochs):
            values = {metric: float(v[epoch]) for metric, v in history.items() if epoch < len(v)}
            scalars.append((epoch + 1, {**values, "diverged": float(trial.diverged)}))
        _write_events(self.root / trial.trial_id, summary, scalars)


def _write_events(run_dir, summary, scalars=()) -> None:
    """One event file in `run_dir`: `summary` at step 0 (as ``tf.summary.hparams`` writes it),
    then ``(step, {tag: value})`` scalars (TensorFlow-free: `keras_bn.events`)."""
    import time

    from keras_bn import _keras_internals as internals
    from keras_bn.events import EventFileWriter

    writer = EventFileWriter(run_dir)
    try:
        writer.add(internals.tensorboard_event_class()(wall_time=time.time(), step=0, summary=summary))
        for step, values in scalars:
            writer.add_scalars(step, values)
    finally:
        writer.close()


def _fit_inputs(data, validation_data, objective: Objective, batch_size: int) -> dict:
    """``model.fit`` keyword arguments for `data` in any form `fit` takes (see `random_search`)."""
    kind = data_kind(data)
    if kind == "generator":  # read once, as fit does; every trial then trains on the same batches
        read = list(iterate_batches(data))
        if not read:
            raise ValueError("`data` (a generator) yielded no batches.")
        data, batch_size = (np.concatenate([b[0] for b in read]), np.concatenate([b[1] for b in read])), len(read[0][0])
        kind = "arrays"
    if kind == "arrays":
        x, y, validation = split_data(data)
        if validation is not None and validation_data is not None:
            raise ValueError("Pass the validation split once: `data` holds (x, y, x_val, y_val) and "
                             "`validation_data` is given too. Received: validation_data=...")
        validation = validation_data if validation_data is not None else validation
        if validation is None:
            x, y, validation = holdout(x, y)
        return dict(x=x, y=y, batch_size=batch_size, validation_data=validation)
    if validation_data is None and objective.name.startswith("val_"):
        raise ValueError(f"`validation_data` is needed for objective={objective.name!r} when `data` is a "
                         f"{type(data).__name__} (no hold-out is taken from it), or use objective='loss'. "
                         f"Received: validation_data=None")
    return dict(x=data, validation_data=validation_data, shuffle=kind == "py_dataset")  # a Dataset shuffles itself


def _run_trials(model_fn, configs, inputs: dict, *, stage, epochs, factor, log, verbose,
                objective: Objective) -> list:
    from keras_bn.optimizers import adam
    from keras_bn.sanity import LossGuard

    trials = []
    for i, hparams in enumerate(configs):
        trial_id = f"{stage}_{i:02d}"
        model = make_model(model_fn, dict(hparams))
        if not is_compiled(model):  # a compiled model trains as its model_fn compiled it
            compiled(model, adam(learning_rate=hparams["learning_rate"]) if "learning_rate" in hparams else None)
        guard = LossGuard(factor, verbose=False)
        history = model.fit(**inputs, epochs=epochs, callbacks=[guard], verbose=0).history
        if objective.name not in history:
            raise ValueError(f"`objective` must be a key the fit logs: {', '.join(sorted(history))}. "
                             f"Received: objective={objective.name!r}")
        last = {k: float(v[-1]) for k, v in history.items() if v}
        trial = Trial(trial_id, stage, dict(hparams), last, len(history.get("loss", [])), objective, guard.reason)
        if log is not None:
            log.write(trial, history)
        if verbose:
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in hparams.items())
            status = f"STOPPED ({guard.reason})" if guard.stopped else f"{objective.name} {trial.value:.4g}"
            print(f"{trial_id}: {shown}: {status}")
        trials.append(trial)
    return trials


def edge_warnings(result: SearchResult, space: dict | None = None, edge: float = 0.1, *,
                  _stacklevel: int = 2) -> list[str]:
    """Messages for each Range whose best value lies in the outer `edge` of its range; each is
    also issued with ``warnings.warn``. A grid axis of fewer than 3 points is skipped: its best
    value is always an end, which says nothing about where the optimum lies.

    Usage: ``edge_warnings(result)  # ["best learning_rate=0.0891 is at the high edge of ..."]``
    """
    space = space or result.space
    best, messages = result.best, []
    grid_only = bool(result.trials) and all(t.stage == "grid" for t in result.trials)
    for name, param in space.items():
        if not isinstance(param, Range) or (grid_only and result.distinct_values(name) < 3):
            continue
        p = param.position(best.hparams[name])
        if p < edge or p > 1 - edge:
            side = "low" if p < edge else "high"
            messages.append(f"best {name}={best.hparams[name]:.3g} is at the {side} edge of its range "
                            f"[{param.low:g}, {param.high:g}]; the optimum may lie outside, widen the range.")
    for message in messages:
        warnings.warn(message, stacklevel=_stacklevel)
    return messages


def _search(kind, model_fn, space, data, trials, *, epochs, batch_size, factor, log_dir, seed, verbose,
            objective, validation_data) -> SearchResult:
    space = _check_space(space)
    trials = check_positive_int("trials", trials)
    epochs = check_positive_int("epochs", epochs)
    objective = Objective.of(objective)
    configs = _grid(space, trials) if kind == "grid" else _sample(space, trials, np.random.default_rng(seed))
    log = _HParamsLog(log_dir, space) if log_dir is not None else None
    inputs = _fit_inputs(data, validation_data, objective, batch_size)
    found = _run_trials(model_fn, configs, inputs, stage=kind, epochs=epochs, factor=factor, log=log,
                        verbose=verbose, objective=objective)
    result = SearchResult(found, space, log_dir=None if log_dir is None else str(log_dir))
    result.edge_warnings = edge_warnings(result, _stacklevel=4)  # user -> *_search -> _search -> here
    return result


def random_search(model_fn: Callable, space: dict, data, trials: int = 10, *, epochs: int = 2,
                  batch_size: int = 64, factor: float = 3.0, log_dir=None, seed: int = 0,
                  objective: str | Objective = "val_loss", validation_data=None,
                  verbose: bool = True) -> SearchResult:
    """Train `trials` models ``model_fn(hparams)`` with hyperparameters sampled from `space`.

    Args:
        model_fn: ``hparams dict -> keras.Model``. A compiled model trains as compiled (its
            loss, metrics and optimizer). An uncompiled one gets
            ``keras_bn.optimizers.adam(learning_rate=hparams["learning_rate"])`` (Keras'
            default when absent), sparse cross-entropy and accuracy.
        space: ``{name: Range | Choice}``.
        data: what ``model.fit`` takes: ``(x, y, x_val, y_val)``; ``(x, y)`` or a
            `keras_bn.data.Dataset`, whose last 20% of the training samples then serve for
            validation; a ``tf.data.Dataset`` or ``keras.utils.PyDataset`` of ``(x, y)`` batches
            (with `validation_data`); or a generator of batches (read once, its batches then
            serve every trial; 20% held out).
        validation_data: ``(x_val, y_val)``, a Dataset or a PyDataset (fit's `validation_data`).
        objective: a fit-log key (``"val_loss"``, ``"val_<metric>"``, ``"loss"``; direction
            inferred as keras-tuner does) or an `Objective`; the best trial optimizes it.
        trials, epochs, batch_size: the budget and each trial's training.
        factor: LossGuard's kill rule (stop at `factor` x the initial loss).
        log_dir: the HParams dashboard root (see the module docstring); None: no files.

    Usage: ``random_search(model_fn, {"learning_rate": Range(1e-5, 1e-1)}, data, trials=9)``
    """
    return _search("random", model_fn, space, data, trials, epochs=epochs, batch_size=batch_size,
                   factor=factor, log_dir=log_dir, seed=seed, verbose=verbose, objective=objective,
                   validation_data=validation_data)


def grid_search(model_fn: Callable, space: dict, data, trials: int = 10, *, epochs: int = 2,
                batch_size: int = 64, factor: float = 3.0, log_dir=None, objective: str | Objective = "val_loss",
                validation_data=None, verbose: bool = True) -> SearchResult:
    """Like `random_search`, on the largest full grid that fits in `trials` (k points per
    Range, log-spaced when ``log``, ends included; every value of each Choice).

    Usage: ``grid_search(model_fn, space, data, trials=9)  # 3 x 3 for two Ranges``
    """
    return _search("grid", model_fn, space, data, trials, epochs=epochs, batch_size=batch_size,
                   factor=factor, log_dir=log_dir, seed=0, verbose=verbose, objective=objective,
                   validation_data=validation_data)


def refine(result: SearchResult, top_k: int = 3, margin: float = 0.5) -> dict:
    """The fine space from the best `top_k` trials of `result`.

    Each Range becomes the span of the top trials' values, widened by `margin` x that span on
    each side (in log space when ``log``) and clipped to the coarse range, so it lies inside
    the coarse range and contains the best trial. Each Choice keeps the values the top trials
    used.

    Usage: ``fine_space = refine(coarse_result, top_k=3)``
    """
    top_k = check_positive_int("top_k", top_k)
    margin = check_float("margin", margin, low=0.0)
    top = [t for t in result.top(top_k) if t.score() > -math.inf] or result.top(1)
    fine = {}
    for name, param in result.space.items():
        values = [t.hparams[name] for t in top]
        if isinstance(param, Choice):
            fine[name] = Choice(tuple(v for v in param.values if v in values))
            continue
        u = [param.position(v) for v in values]
        span = max(u) - min(u) or 0.1
        lo, hi = max(0.0, min(u) - margin * span), min(1.0, max(u) + margin * span)
        fine[name] = Range(param.at(lo), param.at(hi), log=param.log)
    return fine


def coarse_to_fine(model_fn: Callable, space: dict, data, coarse_trials: int = 10, fine_trials: int = 10, *,
                   top_k: int = 3, margin: float = 0.5, coarse_epochs: int = 1, fine_epochs: int = 2,
                   batch_size: int = 64, factor: float = 3.0, log_dir=None, seed: int = 0,
                   objective: str | Objective = "val_loss", validation_data=None,
                   verbose: bool = True) -> SearchResult:
    """A coarse random search (short trials), then a fine one in `refine`'s narrowed space.

    Both stages go to one HParams dashboard (``coarse_NN`` and ``fine_NN`` runs, the coarse
    space as its config). The result holds both stages' trials, ``fine_space`` and the edge
    warnings of each stage. `data`, `validation_data` and `objective` as in `random_search`.

    Usage: ``result = coarse_to_fine(model_fn, space, data, 12, 8, log_dir="logs/c2f")``
    """
    space = _check_space(space)
    coarse_trials = check_positive_int("coarse_trials", coarse_trials)
    fine_trials = check_positive_int("fine_trials", fine_trials)
    objective = Objective.of(objective)
    inputs = _fit_inputs(data, validation_data, objective, batch_size)
    log = _HParamsLog(log_dir, space) if log_dir is not None else None
    rng = np.random.default_rng(seed)
    common = dict(factor=factor, log=log, verbose=verbose, objective=objective)
    coarse = SearchResult(_run_trials(model_fn, _sample(space, coarse_trials, rng), inputs, stage="coarse",
                                      epochs=check_positive_int("coarse_epochs", coarse_epochs), **common), space)
    fine_space = refine(coarse, top_k, margin)
    if verbose:
        print("fine space: " + ", ".join(f"{n}={p}" for n, p in fine_space.items()))
    fine = SearchResult(_run_trials(model_fn, _sample(fine_space, fine_trials, rng), inputs, stage="fine",
                                    epochs=check_positive_int("fine_epochs", fine_epochs), **common), fine_space)
    return SearchResult(coarse.trials + fine.trials, space, fine_space=fine_space,
                        edge_warnings=edge_warnings(coarse, _stacklevel=3) + edge_warnings(fine, _stacklevel=3),
                        log_dir=None if log_dir is None else str(log_dir))
