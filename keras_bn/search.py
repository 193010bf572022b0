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

Every trial is a run ``<log_dir>/<stage>_<nn>/`` with its hyperparameters
(``tensorboard.plugins.hparams.api.hparams``) and per-epoch scalars ``loss``, ``val_loss``,
``val_accuracy`` and ``diverged``, and ``<log_dir>`` holds the ``hparams_config``, so the
HParams dashboard lists, sorts and plots all trials. `SearchResult.table` prints the same
trials; `SearchResult.save` writes them as CSV or Markdown.

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
    result = random_search(model_fn, space, (x, y, x_val, y_val), trials=9, log_dir="logs/search")
    print(result.table()); result.best.hparams
"""

from __future__ import annotations

import csv
import itertools
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_bn._training import compiled, holdout, make_model, split_data
from keras_bn._validation import check_float, check_positive_int

METRICS = ("val_accuracy", "val_loss", "loss", "diverged")


@dataclass(frozen=True)
class Range:
    """A real hyperparameter in [low, high], sampled log-uniformly when `log` (scale parameters
    such as the learning rate or the L2 strength), else uniformly.

    Usage: ``Range(1e-5, 1e-1)`` (log), ``Range(0.0, 0.5, log=False)``
    """

    low: float
    high: float
    log: bool = True

    def __post_init__(self):
        low = check_float("low", self.low, low=0.0, low_inclusive=False) if self.log else check_float("low", self.low)
        check_float("high", self.high, low=low, low_inclusive=False)

    def _to_unit(self, value: float) -> float:
        f = math.log if self.log else float
        return (f(value) - f(self.low)) / (f(self.high) - f(self.low))

    def _from_unit(self, u):
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        return float(min(max(value, self.low), self.high))  # no rounding past the ends

    def sample(self, rng: np.random.Generator) -> float:
        return self._from_unit(rng.uniform())

    def grid(self, k: int) -> list[float]:
        """`k` evenly spaced values (in log space when `log`), the ends included when k > 1."""
        return [self._from_unit(0.5)] if k == 1 else [self._from_unit(u) for u in np.linspace(0, 1, k)]

    def position(self, value: float) -> float:
        """Where `value` sits in the range, from 0 (low) to 1 (high)."""
        return self._to_unit(value)

    def domain(self):
        from tensorboard.plugins.hparams import api as hp

        return hp.RealInterval(float(self.low), float(self.high))


@dataclass(frozen=True)
class Choice:
    """A categorical hyperparameter (all values of one type: str, bool, int or float).

    Usage: ``Choice(("batch", "layer", "none"))``
    """

    values: tuple

    def __post_init__(self):
        values = tuple(self.values)
        if not values or any(v is None for v in values) or len({type(v) for v in values}) != 1:
            raise ValueError(f"`values` must be a non-empty list of one type, without None. Received: values={self.values!r}")
        object.__setattr__(self, "values", values)

    def sample(self, rng: np.random.Generator):
        return self.values[int(rng.integers(len(self.values)))]

    def domain(self):
        from tensorboard.plugins.hparams import api as hp

        return hp.Discrete(list(self.values))


@dataclass(frozen=True)
class Trial:
    """One trained configuration. `stopped` holds LossGuard's reason when it diverged."""

    trial_id: str
    stage: str
    hparams: dict
    loss: float
    val_loss: float
    val_accuracy: float
    epochs: int
    stopped: str | None = None

    @property
    def diverged(self) -> bool:
        return self.stopped is not None

    def score(self) -> float:
        """val_accuracy, or -inf for a diverged or NaN trial (they rank last)."""
        ok = not self.diverged and math.isfinite(self.val_accuracy)
        return self.val_accuracy if ok else -math.inf


@dataclass
class SearchResult:
    """The trials of one search (or both stages of `coarse_to_fine`) and what was learned.

    Attributes: trials, space (the searched space; for coarse_to_fine the coarse one),
    fine_space (coarse_to_fine only), edge_warnings (messages), log_dir.
    """

    trials: list
    space: dict
    fine_space: dict | None = None
    edge_warnings: list = field(default_factory=list)
    log_dir: str | None = None

    def stage(self, name: str) -> "SearchResult":
        """The trials of one stage ("random", "grid", "coarse", "fine")."""
        return SearchResult([t for t in self.trials if t.stage == name], self.space, log_dir=self.log_dir)

    @property
    def best(self) -> Trial:
        return max(self.trials, key=Trial.score)

    def top(self, k: int) -> list:
        return sorted(self.trials, key=Trial.score, reverse=True)[:k]

    def distinct_values(self, name: str) -> int:
        """How many different values of hyperparameter `name` the trials tried."""
        return len({t.hparams[name] for t in self.trials})

    def rows(self) -> tuple[list, list]:
        names = list(self.space)
        columns = ["trial", "stage", *names, "loss", "val_loss", "val_accuracy", "epochs", "status"]
        rows = [[t.trial_id, t.stage, *(t.hparams[n] for n in names), t.loss, t.val_loss, t.val_accuracy,
                 t.epochs, f"stopped: {t.stopped}" if t.stopped else "ok"] for t in self.trials]
        return columns, rows

    def table(self) -> str:
        """The trials as a Markdown table."""
        from keras_bn._tables import format_table

        return format_table(*self.rows())

    def save(self, path) -> Path:
        """Write the trials to `path`: CSV for ``.csv``, else a Markdown table."""
        path = Path(path)
        if path.suffix == ".csv":
            columns, rows = self.rows()
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(columns)
                writer.writerows(rows)
        else:
            path.write_text(self.table() + "\n")
        return path


def _check_space(space) -> dict:
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"`space` must be a non-empty dict of name -> Range or Choice. Received: space={space!r}")
    for name, param in space.items():
        if not isinstance(param, (Range, Choice)):
            raise ValueError(f"`space` values must be Range or Choice; {name!r} is {param!r}. Received: space={space!r}")
    return dict(space)


def _sample(space: dict, trials: int, rng: np.random.Generator) -> list[dict]:
    return [{name: param.sample(rng) for name, param in space.items()} for _ in range(trials)]


def _grid(space: dict, trials: int) -> list[dict]:
    """The largest full grid within `trials`: every Choice value, and k points per Range."""
    ranges = [n for n, p in space.items() if isinstance(p, Range)]
    choices = math.prod(len(p.values) for p in space.values() if isinstance(p, Choice))
    k = max(1, int(math.floor((trials / choices) ** (1 / len(ranges)) + 1e-9))) if ranges else 1
    axes = [space[n].grid(k) if n in ranges else list(space[n].values) for n in space]
    return [dict(zip(space, values)) for values in itertools.product(*axes)][:trials]


class _HParamsLog:
    """The HParams dashboard files: the config in `root`, one run per trial."""

    def __init__(self, root, space: dict):
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        self.root, self.tf, self.hp = Path(root), tf, hp
        self.hparams = {name: hp.HParam(name, param.domain()) for name, param in space.items()}
        writer = tf.summary.create_file_writer(str(self.root))
        with writer.as_default():
            hp.hparams_config(hparams=list(self.hparams.values()),
                              metrics=[hp.Metric(m, display_name=m) for m in METRICS])
        writer.close()

    def write(self, trial: Trial, history: dict) -> None:
        tf = self.tf
        writer = tf.summary.create_file_writer(str(self.root / trial.trial_id))
        with writer.as_default():
            self.hp.hparams({self.hparams[k]: v for k, v in trial.hparams.items() if k in self.hparams},
                            trial_id=trial.trial_id)
            for epoch in range(trial.epochs):
                for metric in ("loss", "val_loss", "val_accuracy"):
                    values = history.get(metric, [])
                    if epoch < len(values):
                        tf.summary.scalar(metric, float(values[epoch]), step=epoch + 1)
                tf.summary.scalar("diverged", float(trial.diverged), step=epoch + 1)
        writer.close()


def _run_trials(model_fn, configs, data, *, stage, epochs, batch_size, factor, log, verbose) -> list:
    from keras_bn.optimizers import adam
    from keras_bn.sanity import LossGuard

    x, y, validation = split_data(data)
    if validation is None:
        x, y, validation = holdout(x, y)
    trials = []
    for i, hparams in enumerate(configs):
        trial_id = f"{stage}_{i:02d}"
        optimizer = adam(learning_rate=hparams["learning_rate"]) if "learning_rate" in hparams else None
        model = compiled(make_model(model_fn, dict(hparams)), optimizer)
        guard = LossGuard(factor, verbose=False)
        fit = model.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=validation,
                        callbacks=[guard], verbose=0)
        history = fit.history
        last = {m: float(history[m][-1]) if history.get(m) else float("nan") for m in ("loss", "val_loss", "val_accuracy")}
        trial = Trial(trial_id, stage, dict(hparams), last["loss"], last["val_loss"], last["val_accuracy"],
                      len(history.get("loss", [])), guard.reason)
        if log is not None:
            log.write(trial, history)
        if verbose:
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in hparams.items())
            status = f"STOPPED ({guard.reason})" if guard.stopped else f"val_accuracy {trial.val_accuracy:.4f}"
            print(f"{trial_id}: {shown}: {status}")
        trials.append(trial)
    return trials


def edge_warnings(result: SearchResult, space: dict | None = None, edge: float = 0.1) -> list[str]:
    """Messages for each Range whose best value lies in the outer `edge` of its range; each is
    also issued with ``warnings.warn``.

    Usage: ``edge_warnings(result)  # ["best learning_rate=0.0891 is at the high edge of ..."]``
    """
    space = space or result.space
    best, messages = result.best, []
    for name, param in space.items():
        if not isinstance(param, Range):
            continue
        p = param.position(best.hparams[name])
        if p < edge or p > 1 - edge:
            side = "low" if p < edge else "high"
            messages.append(f"best {name}={best.hparams[name]:.3g} is at the {side} edge of its range "
                            f"[{param.low:g}, {param.high:g}]; the optimum may lie outside, widen the range.")
    for message in messages:
        warnings.warn(message, stacklevel=2)
    return messages


def _search(kind, model_fn, space, data, trials, *, epochs, batch_size, factor, log_dir, seed, verbose) -> SearchResult:
    space = _check_space(space)
    trials = check_positive_int("trials", trials)
    epochs = check_positive_int("epochs", epochs)
    configs = _grid(space, trials) if kind == "grid" else _sample(space, trials, np.random.default_rng(seed))
    log = _HParamsLog(log_dir, space) if log_dir is not None else None
    found = _run_trials(model_fn, configs, data, stage=kind, epochs=epochs, batch_size=batch_size,
                        factor=factor, log=log, verbose=verbose)
    result = SearchResult(found, space, log_dir=None if log_dir is None else str(log_dir))
    result.edge_warnings = edge_warnings(result)
    return result


def random_search(model_fn: Callable, space: dict, data, trials: int = 10, *, epochs: int = 2,
                  batch_size: int = 64, factor: float = 3.0, log_dir=None, seed: int = 0,
                  verbose: bool = True) -> SearchResult:
    """Train `trials` models ``model_fn(hparams)`` with hyperparameters sampled from `space`.

    Args:
        model_fn: ``hparams dict -> keras.Model``. An uncompiled model gets
            ``keras_bn.optimizers.adam(learning_rate=hparams["learning_rate"])`` (Keras'
            default when absent), sparse cross-entropy and accuracy.
        space: ``{name: Range | Choice}``.
        data: ``(x, y, x_val, y_val)``, or ``(x, y)`` / a Dataset, whose last 20% of the
            training samples then serve for validation.
        trials, epochs, batch_size: the budget and each trial's training.
        factor: LossGuard's kill rule (stop at `factor` x the initial loss).
        log_dir: the HParams dashboard root (see the module docstring); None: no files.

    Usage: ``random_search(model_fn, {"learning_rate": Range(1e-5, 1e-1)}, data, trials=9)``
    """
    return _search("random", model_fn, space, data, trials, epochs=epochs, batch_size=batch_size,
                   factor=factor, log_dir=log_dir, seed=seed, verbose=verbose)


def grid_search(model_fn: Callable, space: dict, data, trials: int = 10, *, epochs: int = 2,
                batch_size: int = 64, factor: float = 3.0, log_dir=None, verbose: bool = True) -> SearchResult:
    """Like `random_search`, on the largest full grid that fits in `trials` (k points per
    Range, log-spaced when ``log``, ends included; every value of each Choice).

    Usage: ``grid_search(model_fn, space, data, trials=9)  # 3 x 3 for two Ranges``
    """
    return _search("grid", model_fn, space, data, trials, epochs=epochs, batch_size=batch_size,
                   factor=factor, log_dir=log_dir, seed=0, verbose=verbose)


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
        fine[name] = Range(param._from_unit(lo), param._from_unit(hi), log=param.log)
    return fine


def coarse_to_fine(model_fn: Callable, space: dict, data, coarse_trials: int = 10, fine_trials: int = 10, *,
                   top_k: int = 3, margin: float = 0.5, coarse_epochs: int = 1, fine_epochs: int = 2,
                   batch_size: int = 64, factor: float = 3.0, log_dir=None, seed: int = 0,
                   verbose: bool = True) -> SearchResult:
    """A coarse random search (short trials), then a fine one in `refine`'s narrowed space.

    Both stages go to one HParams dashboard (``coarse_NN`` and ``fine_NN`` runs, the coarse
    space as its config). The result holds both stages' trials, ``fine_space`` and the edge
    warnings of each stage.

    Usage: ``result = coarse_to_fine(model_fn, space, data, 12, 8, log_dir="logs/c2f")``
    """
    space = _check_space(space)
    coarse_trials = check_positive_int("coarse_trials", coarse_trials)
    fine_trials = check_positive_int("fine_trials", fine_trials)
    log = _HParamsLog(log_dir, space) if log_dir is not None else None
    rng = np.random.default_rng(seed)
    common = dict(batch_size=batch_size, factor=factor, log=log, verbose=verbose)
    coarse = SearchResult(_run_trials(model_fn, _sample(space, coarse_trials, rng), data, stage="coarse",
                                      epochs=check_positive_int("coarse_epochs", coarse_epochs), **common), space)
    fine_space = refine(coarse, top_k, margin)
    if verbose:
        print("fine space: " + ", ".join(f"{n}={p}" for n, p in fine_space.items()))
    fine = SearchResult(_run_trials(model_fn, _sample(fine_space, fine_trials, rng), data, stage="fine",
                                    epochs=check_positive_int("fine_epochs", fine_epochs), **common), fine_space)
    return SearchResult(coarse.trials + fine.trials, space, fine_space=fine_space,
                        edge_warnings=edge_warnings(coarse) + edge_warnings(fine),
                        log_dir=None if log_dir is None else str(log_dir))
