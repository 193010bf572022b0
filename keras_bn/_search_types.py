"""The values a search works with: its space (`Range`, `Choice`), its `Objective`, its `Trial`s
and `SearchResult`. `keras_bn.search` re-exports each; see its docstring.

Usage::

    space = {"learning_rate": Range(1e-5, 1e-1), "norm": Choice(("batch", "none"))}
    Objective.of("val_auc")  # Objective(name='val_auc', direction='max')
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_bn import _keras_internals as internals
from keras_bn._validation import check_choice, check_float

__all__ = ["Choice", "Objective", "Range", "SearchResult", "Trial", "infer_direction"]

# keras-tuner's rule (metrics_tracking.infer_metric_direction): these metric classes are
# maximized; every other Keras metric or loss is minimized.
_MAX_METRICS = frozenset({
    "Accuracy", "BinaryAccuracy", "CategoricalAccuracy", "SparseCategoricalAccuracy",
    "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy", "TruePositives", "TrueNegatives",
    "Precision", "Recall", "AUC", "SensitivityAtSpecificity", "SpecificityAtSensitivity",
    "PrecisionAtRecall", "RecallAtPrecision", "F1Score", "FBetaScore", "R2Score", "IoU", "MeanIoU",
    "BinaryIoU", "OneHotIoU", "OneHotMeanIoU", "CosineSimilarity",
})


def infer_direction(name: str) -> str | None:
    """"min" or "max" for a fit-log key as keras-tuner infers it, None when it cannot tell.

    Usage: ``infer_direction("val_auc")  # "max"``
    """
    import re

    import keras

    base = re.sub(r"_\d+$", "", name.removeprefix("val_").removeprefix("weighted_"))
    if base == "loss" or base.endswith("_loss"):
        return "min"
    if base in ("acc", "accuracy") or base.endswith("_accuracy"):
        return "max"
    for get in (keras.metrics.get, keras.losses.get):
        try:
            metric = get(base)
        except (ValueError, TypeError):
            continue
        kind = type(metric).__name__ if isinstance(metric, (keras.metrics.Metric, keras.losses.Loss)) else ""
        return "max" if kind in _MAX_METRICS else "min"
    return None


@dataclass(frozen=True)
class Objective:
    """What the trials are ranked by: a key of the fit logs and whether to minimize or maximize it.

    Usage: ``Objective("val_r2_score", "max")``; a plain string infers the direction.
    """

    name: str
    direction: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be a fit-log key such as 'val_loss'. Received: name={self.name!r}")
        check_choice("direction", self.direction, ("min", "max"))

    @classmethod
    def of(cls, objective) -> "Objective":
        """`objective` as an Objective (a string gets keras-tuner's inferred direction)."""
        if isinstance(objective, Objective):
            return objective
        if not isinstance(objective, str):
            raise TypeError(f"`objective` must be a fit-log key (str) or a keras_bn.search.Objective. "
                            f"Received: objective={objective!r}")
        direction = infer_direction(objective)
        if direction is None:
            raise ValueError(f"Cannot infer whether to minimize or maximize `objective`={objective!r}: pass "
                             f"keras_bn.search.Objective({objective!r}, 'min' or 'max'). Received: objective={objective!r}")
        return cls(objective, direction)


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
        if check_float("high", self.high) <= low:
            raise ValueError(f"`high` must be greater than `low`={low:g}. Received: high={self.high!r}")

    def position(self, value: float) -> float:
        """Where `value` sits in the range, from 0 (low) to 1 (high) (in log space when `log`)."""
        f = math.log if self.log else float
        return (f(value) - f(self.low)) / (f(self.high) - f(self.low))

    def at(self, u: float) -> float:
        """The value at position `u` in [0, 1] (the inverse of `position`), clipped to the range."""
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        return float(min(max(value, self.low), self.high))  # no rounding past the ends

    def sample(self, rng: np.random.Generator) -> float:
        return self.at(rng.uniform())

    def grid(self, k: int) -> list[float]:
        """`k` evenly spaced values (in log space when `log`), the ends included when k > 1."""
        return [self.at(0.5)] if k == 1 else [self.at(u) for u in np.linspace(0, 1, k)]

    def domain(self):
        hp = internals.tensorboard_hparams_api()
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
        hp = internals.tensorboard_hparams_api()
        return hp.Discrete(list(self.values))


@dataclass(frozen=True)
class Trial:
    """One trained configuration: `metrics` holds the last epoch's value of every key its fit
    logged, `objective` what it is ranked by, `stopped` LossGuard's reason when it diverged."""

    trial_id: str
    stage: str
    hparams: dict
    metrics: dict
    epochs: int
    objective: Objective = Objective("val_loss", "min")
    stopped: str | None = None

    def metric(self, name: str) -> float:
        """The last value of fit-log key `name` (NaN when the fit did not log it)."""
        return float(self.metrics.get(name, math.nan))

    @property
    def loss(self) -> float:
        return self.metric("loss")

    @property
    def val_loss(self) -> float:
        return self.metric("val_loss")

    @property
    def val_accuracy(self) -> float:
        return self.metric("val_accuracy")

    @property
    def value(self) -> float:
        """The objective's value."""
        return self.metric(self.objective.name)

    @property
    def diverged(self) -> bool:
        return self.stopped is not None

    def score(self) -> float:
        """Higher is better: the objective's value (negated when minimized), or -inf for a
        diverged or NaN trial (they rank last)."""
        if self.diverged or not math.isfinite(self.value):
            return -math.inf
        return self.value if self.objective.direction == "max" else -self.value


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

    @property
    def objective(self) -> Objective | None:
        return self.trials[0].objective if self.trials else None

    def rows(self) -> tuple[list, list]:
        names = list(self.space)
        logged = list(dict.fromkeys(k for t in self.trials for k in t.metrics))
        columns = ["trial", "stage", *names, *logged, "epochs", "status"]
        rows = [[t.trial_id, t.stage, *(t.hparams[n] for n in names), *(t.metric(k) for k in logged),
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
