"""The records the sanity checks return (`keras_bn.sanity` re-exports each).

Usage::

    report = keras_bn.sanity.sanity_check(model_fn, (x, y)); report.results["initial_loss"].passed
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["InitialLossResult", "OverfitResult", "RegularizationResult", "SanityReport", "ShortRunResult"]

def _status(passed: bool | None) -> str:
    return "n/a" if passed is None else ("pass" if passed else "FAIL")


@dataclass(frozen=True)
class InitialLossResult:
    """`check_initial_loss`: the mean loss of the untrained model against its reference value.

    `passed` is None when the loss has no reference value (`expected` None, `note` says why);
    `formula` is ``"ln(C)"`` or ``"ln(2)"``; `note` also names a from_logits mismatch.
    """

    passed: bool | None
    loss: float
    expected: float | None
    num_classes: int | None
    tolerance: float
    loss_name: str = "sparse_categorical_crossentropy"
    formula: str | None = "ln(C)"
    note: str = ""

    def row(self):
        if self.expected is None:
            return ("initial loss", None, f"{self.loss_name} {self.loss:.4g}", f"not applicable: {self.note}")
        reference = "ln(2)" if self.formula == "ln(2)" else f"ln({self.num_classes})"
        measured = f"loss {self.loss:.3f}" + (f" ({self.note})" if self.note else "")
        return (f"initial loss ~ {self.formula}", self.passed, measured,
                f"{reference} = {self.expected:.3f} +- {self.tolerance:.0%}")


@dataclass(frozen=True)
class OverfitResult:
    """`check_overfit`: steps to reach the targets on `n` examples (None: never reached)."""

    passed: bool
    steps: int | None
    accuracy: float | None  # None: the model's compile has no accuracy metric (loss target only)
    loss: float
    n: int
    max_steps: int

    def row(self):
        reached = f"after {self.steps} steps" if self.passed else f"not within {self.max_steps} steps"
        acc = "accuracy not compiled" if self.accuracy is None else f"acc {self.accuracy:.3f}"
        return (f"overfit {self.n} examples", self.passed, f"{acc}, loss {self.loss:.4f} {reached}",
                "loss ~ 0" if self.accuracy is None else "acc 1.0, loss ~ 0")


@dataclass(frozen=True)
class RegularizationResult:
    """`check_regularization_raises_loss`: the loss without and with an L2 penalty."""

    passed: bool
    loss: float
    regularized_loss: float
    expected_penalty: float
    l2: float

    def row(self):
        return (f"L2 {self.l2:g} raises the loss", self.passed,
                f"{self.loss:.4f} -> {self.regularized_loss:.4f}",
                f"+{self.expected_penalty:.4f}")


@dataclass(frozen=True)
class ShortRunResult:
    """`check_short_run`: a short training run under `LossGuard`."""

    passed: bool
    initial_loss: float
    final_loss: float
    stopped: bool
    reason: str | None
    steps: int

    def row(self):
        what = f"stopped at step {self.steps}: {self.reason}" if self.stopped else f"{self.steps} steps"
        return ("short run loss falls", self.passed,
                f"{self.initial_loss:.3f} -> {self.final_loss:.4g} ({what})", "falls, never 3x start")


@dataclass(frozen=True)
class SanityReport:
    """`sanity_check`'s results by check name; ``.passed`` when every check passed."""

    results: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """No check failed (a not-applicable check neither passes nor fails)."""
        return all(r.passed is not False for r in self.results.values())

    def table(self) -> str:
        """A Markdown table: check, pass/FAIL/n/a, measured, expected."""
        from keras_bn._tables import format_table

        rows = []
        for result in self.results.values():
            name, ok, measured, expected = result.row()
            rows.append([name, _status(ok), measured, expected])
        return format_table(["check", "result", "measured", "expected"], rows)
