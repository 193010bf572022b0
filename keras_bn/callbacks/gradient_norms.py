"""GradientNorms: the L2 norms of the gradients the optimizer applied in the real training step.

The statistics come from the model's `GradientTap` (keras_bn.callbacks._gradient_tap: where the
gradients are seen, with and without tf.distribute, and what clipping means there), which the
model's `StepTaps` puts into the traced training step of ``fit``: a sum of squares per variable
(on JAX all in one fused reduction) and a few ops per step, no host transfer; the host reads the
statistics only every `every` steps.
A custom training loop calls `keras_bn.callbacks.record_gradients` inside its step instead.

**Nothing unmeasured is written.** The tap counts its firings inside the step; when the count
did not move since the last read (the step was traced before the callback attached, or a custom
loop does not call `record_gradients`), no ``grad_*`` scalar is written for those steps and one
warning says why.

Usage::

    model.fit(x, y, callbacks=[keras_bn.callbacks.GradientNorms("logs/run1", every=100)])
"""

from __future__ import annotations


import numpy as np

from keras_bn import _warnings
from keras_bn.callbacks._base import DiagnosticCallback, ReadBudget
from keras_bn.callbacks._layers import group_norms, variable_groups
from keras_bn.callbacks._writer import RunWriters

__all__ = ["GradientNorms"]

GLOBAL = "global"


def _base_optimizer(optimizer):
    """The optimizer whose ``apply`` sees unscaled gradients (LossScaleOptimizer's inner one)."""
    return getattr(optimizer, "inner_optimizer", None) or optimizer


def _steps(first: int, last: int) -> str:
    return f"step {last}" if first >= last else f"steps {first}-{last}"


class GradientNorms(DiagnosticCallback):
    """Logs per-layer and global L2 norms of the applied gradients every `every` steps.

    Tags (train run): ``grad_norm/<layer>`` and ``grad_global/norm`` (applied gradients);
    when the optimizer clips also ``grad_norm_preclip/<layer>``, ``grad_global/norm_preclip``
    and ``grad_global/clip_fraction`` (share of the steps since the last log where clipping
    engaged); ``nonfinite/grad_steps`` (steps since the last log whose gradients held NaN or
    Inf, or a layer's norm above float32's range, about 1.8e19: its sum of squares overflows
    and its norm reads inf); ``grad_global/norm_max`` (the largest applied global norm of the
    finite steps since the last log); at epoch end the image ``figures/grad_norms``. The per-layer and global
    norms are those of the last step before the log (a sample, not a mean); the counts and
    the maximum cover every step since the last log, with ``steps_per_execution > 1`` too.
    Works on TensorFlow, JAX and PyTorch (same tags, same numbers).

    Args:
        log_dir: the TensorBoard run directory (``<log_dir>/train`` is written).
        every: log every this many optimizer steps (and at each epoch end).
        figures: draw the per-layer bar chart (at an epoch end, at most every `figure_secs`,
            and at train end).
        figure_secs: least wall time between two figures.
        writers: shared `RunWriters` (the `diagnostics` preset passes one).
        read_budget: shared `ReadBudget`: the logging steps it skips are not read (the
            `diagnostics` preset passes one; None: every logging step is read).

    Example::

        cb = keras_bn.callbacks.GradientNorms("logs/run1", every=100)
        model.fit(x, y, epochs=3, callbacks=[cb])
    """

    _log_step_syncs = False  # reads the tap (TapState.read)

    def __init__(
        self,
        log_dir,
        every: int = 100,
        *,
        figures: bool = True,
        figure_secs: float = 60.0,
        writers: RunWriters | None = None,
        read_budget: ReadBudget | None = None,
    ):
        super().__init__(log_dir, every, figures=figures, figure_secs=figure_secs, writers=writers,
                         read_budget=read_budget)
        self._tap = None
        self._last = {"step": 0, "clipped_steps": 0, "nonfinite_steps": 0, "fired_steps": 0}
        self.latest_norms: dict[str, float] = {}
        self.unmeasured_steps = 0  # steps whose gradients the tap did not see (nothing written)
        self.clipping_in_effect: str | None = None  # e.g. "global (one device)", set at train begin
        self._warned_unmeasured = False

    def _attach(self):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("GradientNorms needs a compiled model; call `model.compile(optimizer=...)` first.")
        if not self.model.trainable_variables:
            _warnings.warn(
                f"keras_bn GradientNorms: model {self.model.name!r} has no trainable weights, so "
                f"there is no gradient to measure and no grad_* scalar is written.",
                RuntimeWarning,
            )
            self._tap = None
            return
        self._layer_names, self._groups = variable_groups(self.model)
        self._tap = self._taps.gradient_tap(_base_optimizer(optimizer))
        self._taps.register(self._tap)
        stats = self._tap.read()
        self._last = {"step": self._last_scheduled_step, "clipped_steps": stats["clipped_steps"],
                      "nonfinite_steps": stats["nonfinite_steps"], "fired_steps": stats["fired_steps"]}
        charts = {"gradient norm per layer": r"grad_norm/.*"}
        if self._tap.clipping != "none" and self._tap.preclip_known:
            charts["gradient norm before clipping per layer"] = r"grad_norm_preclip/.*"
            charts["global gradient norm and clip fraction (share of steps clipped)"] = r"grad_global/.*"
        self.writers.add_charts(charts)
        self.clipping_in_effect = f"{self._tap.clipping} ({self._tap.clip_point})"

    def _detach(self):
        self._tap = None

    def _unmeasured(self, first, last) -> None:
        self.unmeasured_steps += max(last - first, 1)
        if self._warned_unmeasured:
            return
        self._warned_unmeasured = True
        if self._taps.calls == 0:
            reason = ("the steps did not run through model.fit's train function (a custom training "
                      "loop, or a step traced before the callback attached): call "
                      "keras_bn.callbacks.record_gradients(model, grads, variables) inside the step")
        elif self._taps.users_function:
            reason = ("model.train_function is a function of your own, kept as it is, and its step was "
                      "traced before the taps were in place (they record in a step traced during the "
                      "fit): wrap a function made in on_train_begin (model.make_train_function(force=True)), "
                      "or call keras_bn.callbacks.record_gradients(model, grads, variables) inside the step")
        else:
            reason = ("the model's train step does not call optimizer.apply with its gradients (a "
                      "custom train_step?): call keras_bn.callbacks.record_gradients(model, grads, "
                      "variables) inside it")
        _warnings.warn(
            f"keras_bn GradientNorms: no gradient was recorded in {_steps(first + 1, last)}, so no "
            f"grad_* scalar was written: {reason}.",
            RuntimeWarning,
        )

    def _log_step(self, step):
        if self._tap is None:
            return
        stats = self._tap.read()
        if stats["fired_steps"] == self._last["fired_steps"]:  # the tap saw no step since the last read
            self._unmeasured(self._last["step"], step)
            self._last["step"] = step
            return
        count = len(self._layer_names)
        applied = group_norms(stats["applied_sumsq"], self._groups, count)
        scalars = {f"grad_norm/{name}": value for name, value in zip(self._layer_names, applied)}
        scalars[f"grad_{GLOBAL}/norm"] = float(np.sqrt(np.sum(stats["applied_sumsq"], dtype=np.float64)))
        finite_steps = (stats["fired_steps"] - self._last["fired_steps"]) - (stats["nonfinite_steps"] - self._last["nonfinite_steps"])
        if finite_steps > 0:  # else no finite step since the last log: no maximum exists
            scalars[f"grad_{GLOBAL}/norm_max"] = float(np.sqrt(stats["peak_sumsq"]))
        window = max(step - self._last["step"], 1)
        if self._tap.clipping != "none" and self._tap.preclip_known:
            preclip = group_norms(stats["preclip_sumsq"], self._groups, count)
            scalars.update({f"grad_norm_preclip/{n}": v for n, v in zip(self._layer_names, preclip)})
            scalars[f"grad_{GLOBAL}/norm_preclip"] = float(np.sqrt(np.sum(stats["preclip_sumsq"], dtype=np.float64)))
            scalars[f"grad_{GLOBAL}/clip_fraction"] = (stats["clipped_steps"] - self._last["clipped_steps"]) / window
        scalars["nonfinite/grad_steps"] = stats["nonfinite_steps"] - self._last["nonfinite_steps"]
        self._last = {key: stats[key] for key in ("clipped_steps", "nonfinite_steps", "fired_steps")}
        self._last["step"] = step
        self.latest_norms = dict(zip(self._layer_names, applied.tolist()))
        with self.writers.writing("train", step) as write:
            write.scalars(scalars)

    def _draw(self, step):
        from keras_bn.callbacks._figure_process import draw_png

        if self.latest_norms:
            image = draw_png("layer_bar_chart", self.latest_norms, ylabel="gradient L2 norm", title=f"step {step}")
            with self.writers.writing("train", step) as write:
                write.image("figures/grad_norms", image)

