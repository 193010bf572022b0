"""GradientNorms: the L2 norms of the gradients the optimizer applied in the real training step.

**Where the gradients are read.** At train begin the callback wraps the optimizer's
``apply(grads, variables)`` on the instance (no subclass; restored at train end or when a
step raises) and rebuilds ``model.train_function`` so the wrapped step is traced. Every
step, inside the compiled step, the wrapper stores each variable's sum of squares (one
``tf.nn.l2_loss`` per variable; ``keras.ops.norm`` fails on conv kernels) in a small
``tf.Variable`` vector (a second one after clipping, only when the optimizer clips) and counts
clipped and non-finite steps. That costs a few ops and no host transfer; the host reads the
statistics only every `every` steps (two small reads when the optimizer does not clip).

Why ``apply``: it is public, it is the one call every Keras 3 train step makes with exactly
the gradients of that step (no second backward pass on a probe batch, unlike W&B's
log_gradients or keract), and it sees the gradient *before* clipping, so both the pre-clip
norm and the applied norm are known: the applied norm follows exactly from Keras' rules
(``clipnorm``: each variable's norm becomes ``min(n, c)``; ``global_clipnorm``: every norm is
scaled by ``min(1, c / global)``; ``clipvalue``: computed from the clipped values). The loss
scale of mixed precision is divided out, as ``apply`` itself does.

**Aggregation point and tf.distribute.** Under a distribution strategy ``apply`` runs once per
replica with that replica's share, *before* the all-reduce; the aggregated gradient exists
only inside the TF optimizer's private ``_backend_update_step`` / ``_all_reduce_sum_gradients``.
So when the optimizer was created under a strategy, `ApplyTap.install` does not wrap ``apply``:
it registers `record` as an observer of `keras_bn.distribute.AggregationHook`, which wraps
``_all_reduce_sum_gradients`` on the instance and shows the *summed* gradients (the global
batch's; what the optimizer applies) and then clips that sum with Keras' own rules, so
``clipnorm``/``global_clipnorm`` act on the global batch's gradient, not on each replica's
share (tensorflow#33929; a warning says so when the optimizer clips). The statistics live in
``ON_READ`` variables created in the strategy's scope (aggregation ``ONLY_FIRST_REPLICA``: every
replica writes the same sum into its own copy; reading one costs no collective). If the
installed Keras lacks the private method, the tap falls back to ``apply`` and warns that the
norms are per replica. On one device both points see the same gradients. With mixed
precision the tap sits on ``LossScaleOptimizer.inner_optimizer``, which receives gradients
already divided by the loss scale, so the logged norms are unscaled.

Usage::

    model.fit(x, y, callbacks=[keras_bn.callbacks.GradientNorms("logs/run1", every=100)])
"""

from __future__ import annotations

import numpy as np

import warnings

from keras_bn import distribute as kb_distribute
from keras_bn.callbacks._base import DiagnosticCallback
from keras_bn.callbacks._layers import group_norms, variable_groups
from keras_bn.callbacks._writer import RunWriters

GLOBAL = "global"


def clipping_mode(optimizer) -> str | None:
    """"clipnorm", "global_clipnorm", "clipvalue" or None: how `optimizer` clips gradients."""
    for mode in ("clipnorm", "global_clipnorm", "clipvalue"):
        value = getattr(optimizer, mode, None)
        if value is not None and value > 0:
            return mode
    return None


def _base_optimizer(optimizer):
    """The optimizer whose ``apply`` sees unscaled gradients (LossScaleOptimizer's inner one)."""
    return getattr(optimizer, "inner_optimizer", None) or optimizer


class ApplyTap:
    """Records per-variable gradient statistics each time ``optimizer.apply`` runs.

    Statistics (``tf.Variable``s, read by the host at its own cadence with `read`):
    ``preclip_sumsq`` (one entry per variable of `variables`, in order), ``applied_sumsq``
    (only when the optimizer clips; else the applied gradient is the pre-clip one),
    ``clipped_steps`` and ``nonfinite_steps`` (running counts). Per step that is one ``L2Loss``
    per variable and a handful of ops on the stacked vector.
    """

    def __init__(self, optimizer, variables):
        import tensorflow as tf

        self._tf = tf
        self.optimizer = optimizer
        self.mode = clipping_mode(optimizer)
        self.strategy = kb_distribute.optimizer_strategy(optimizer)
        self._position = {}
        for i, v in enumerate(variables):
            self._position[id(v)] = i
            self._position.setdefault(id(getattr(v, "value", v)), i)  # the tf.Variable under a Keras one
        size = self._size = len(variables)
        options = {}
        if self.strategy is not None:  # each replica writes its own copy; reads take the first
            options = dict(synchronization=tf.VariableSynchronization.ON_READ,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        with kb_distribute.scope(self.strategy):
            self.preclip_sumsq = tf.Variable(tf.zeros([size]), trainable=False, name="keras_bn_preclip_sumsq", **options)
            self.applied_sumsq = self.preclip_sumsq
            if self.mode is not None:
                self.applied_sumsq = tf.Variable(tf.zeros([size]), trainable=False, name="keras_bn_applied_sumsq", **options)
            counter = dict(initial_value=tf.constant(0, tf.int64), trainable=False, **options)
            self.clipped_steps = tf.Variable(**counter, name="keras_bn_clipped_steps")
            self.nonfinite_steps = tf.Variable(**counter, name="keras_bn_nonfinite_steps")
        self._installed = None  # "apply" or the AggregationHook in use

    # --- where the gradients are observed -----------------------------------------------
    def install(self) -> None:
        """Observe the gradients: after the cross-replica sum under a strategy, else wrap
        ``optimizer.apply`` on the instance."""
        if self._installed is not None:
            return
        if self.strategy is not None:
            hook = kb_distribute.AggregationHook.of(self.optimizer)
            if hook is not None:
                hook.observers.append(self._record_aggregated)
                self._installed = hook
                if self.mode is not None and not hook.keep:
                    warnings.warn(
                        f"keras_bn GradientNorms: under {type(self.strategy).__name__} the optimizer's "
                        f"{self.mode} now clips the gradient summed over replicas (the global batch's), "
                        "not each replica's share as Keras does (tensorflow#33929).",
                        RuntimeWarning, stacklevel=2,
                    )
                return
            warnings.warn(
                "keras_bn GradientNorms: this Keras has no `_all_reduce_sum_gradients`; the logged "
                "norms are of one replica's share of the gradient, before the cross-replica sum.",
                RuntimeWarning, stacklevel=2,
            )
        original_apply = self.optimizer.apply

        def apply(grads, trainable_variables=None):
            variables = trainable_variables if trainable_variables is not None else self.optimizer._trainable_variables
            self.record(list(grads), list(variables))
            return original_apply(grads, trainable_variables)

        self.optimizer.apply = apply
        self._installed = "apply"

    def _record_aggregated(self, grads, variables) -> None:
        self.record(grads, variables, unscale=False)  # ``apply`` divided by the loss scale already

    def remove(self) -> None:
        """Undo `install`."""
        if self._installed == "apply":
            del self.optimizer.apply
        elif self._installed is not None:
            hook = self._installed
            if self._record_aggregated in hook.observers:
                hook.observers.remove(self._record_aggregated)
            hook.release()
        self._installed = None

    # --- what is recorded -----------------------------------------------------------------
    def _half_sumsq(self, grad):
        tf = self._tf
        values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
        return tf.nn.l2_loss(tf.cast(values, tf.float32))  # one op: sum(g**2) / 2

    def record(self, grads, variables, unscale: bool = True) -> None:
        """Store this step's per-variable sums of squares (before and after clipping);
        `unscale` divides by the optimizer's ``loss_scale_factor`` (as ``apply`` does)."""
        tf = self._tf
        zero = tf.constant(0.0)
        preclip = [zero] * self._size
        clip_values = []
        for grad, variable in zip(grads, variables):
            index = self._position.get(id(variable))
            if grad is None or index is None:
                continue
            preclip[index] = self._half_sumsq(grad)
            if self.mode == "clipvalue":
                clip_values.append((index, grad))
        preclip = 2.0 * tf.stack(preclip)
        scale = getattr(self.optimizer, "loss_scale_factor", None) if unscale else None
        if scale is not None:
            preclip = preclip / float(scale) ** 2
        global_sumsq = tf.reduce_sum(preclip)
        self.preclip_sumsq.assign(preclip)
        if self.mode is not None:
            applied, clipped = self._applied(preclip, global_sumsq, clip_values)
            self.applied_sumsq.assign(applied)
            self.clipped_steps.assign_add(tf.cast(clipped, tf.int64))
        self.nonfinite_steps.assign_add(tf.cast(tf.logical_not(tf.math.is_finite(global_sumsq)), tf.int64))

    def _applied(self, preclip, global_sumsq, clip_values):
        """Sums of squares after Keras' clipping, and whether clipping engaged this step."""
        tf = self._tf
        if self.mode == "clipnorm":
            limit = float(self.optimizer.clipnorm) ** 2
            return tf.minimum(preclip, limit), tf.reduce_any(preclip > limit)
        if self.mode == "global_clipnorm":
            limit = float(self.optimizer.global_clipnorm)
            norm = tf.sqrt(global_sumsq)
            factor = limit * tf.minimum(1.0 / norm, 1.0 / limit)
            return preclip * tf.square(factor), norm > limit
        if self.mode == "clipvalue":
            limit = float(self.optimizer.clipvalue)
            applied = tf.unstack(preclip) if clip_values else []
            engaged = tf.constant(False)
            for index, grad in clip_values:
                values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
                applied[index] = 2.0 * self._half_sumsq(tf.clip_by_value(values, -limit, limit))
                engaged = tf.logical_or(engaged, tf.reduce_max(tf.abs(values)) > limit)
            return (tf.stack(applied) if applied else preclip), engaged
        raise ValueError(f"unknown clipping mode {self.mode!r}")

    def read(self) -> dict:
        """The current statistics as NumPy values (two reads when the optimizer does not clip)."""
        preclip = self.preclip_sumsq.numpy()
        clipping = self.mode is not None
        return {
            "preclip_sumsq": preclip,
            "applied_sumsq": self.applied_sumsq.numpy() if clipping else preclip,
            "clipped_steps": int(self.clipped_steps.numpy()) if clipping else 0,
            "nonfinite_steps": int(self.nonfinite_steps.numpy()),
        }


class GradientNorms(DiagnosticCallback):
    """Logs per-layer and global L2 norms of the applied gradients every `every` steps.

    Tags (train run): ``grad_norm/<layer>`` and ``grad_global/norm`` (applied gradients);
    when the optimizer clips also ``grad_norm_preclip/<layer>``, ``grad_global/norm_preclip``
    and ``grad_global/clip_fraction`` (share of the steps since the last log where clipping
    engaged); ``nonfinite/grad_steps`` (steps since the last log whose gradients held NaN or
    Inf); at epoch end the image ``figures/grad_norms``. The logged value is that of the last
    step before the log (a sample, not a mean).

    Args:
        log_dir: the TensorBoard run directory (``<log_dir>/train`` is written).
        every: log every this many optimizer steps (and at each epoch end).
        figures: draw the per-layer bar chart (at an epoch end, at most every `figure_secs`,
            and at train end).
        figure_secs: least wall time between two figures.
        writers: shared `RunWriters` (the `diagnostics` preset passes one).

    Example::

        cb = keras_bn.callbacks.GradientNorms("logs/run1", every=100)
        model.fit(x, y, epochs=3, callbacks=[cb])
    """

    def __init__(
        self,
        log_dir,
        every: int = 100,
        *,
        figures: bool = True,
        figure_secs: float = 60.0,
        writers: RunWriters | None = None,
    ):
        super().__init__(log_dir, every, figures=figures, figure_secs=figure_secs, writers=writers)
        self._tap = None
        self._last = {"step": 0, "clipped_steps": 0, "nonfinite_steps": 0}
        self.latest_norms: dict[str, float] = {}

    def _attach(self):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("GradientNorms needs a compiled model; call `model.compile(optimizer=...)` first.")
        self._layer_names, self._groups = variable_groups(self.model)
        self._tap = ApplyTap(_base_optimizer(optimizer), self.model.trainable_variables)
        self._tap.install()
        self.model.make_train_function(force=True)  # trace the step with the tap in place
        self._last = {"step": self._last_logged_step, "clipped_steps": 0, "nonfinite_steps": 0}
        charts = {"gradient norm per layer": r"grad_norm/.*"}
        if self._tap.mode is not None:
            charts["gradient norm before clipping per layer"] = r"grad_norm_preclip/.*"
            charts["global gradient norm and clip fraction (share of steps clipped)"] = r"grad_global/.*"
        self.writers.add_charts(charts)

    def _detach(self):
        if self._tap is not None:
            self._tap.remove()
            self._tap = None
            self.model.train_function = None  # the next fit traces a clean step

    def _log_step(self, step):
        if self._tap is None:
            return
        stats = self._tap.read()
        count = len(self._layer_names)
        applied = group_norms(stats["applied_sumsq"], self._groups, count)
        scalars = {f"grad_norm/{name}": value for name, value in zip(self._layer_names, applied)}
        scalars[f"grad_{GLOBAL}/norm"] = float(np.sqrt(np.sum(stats["applied_sumsq"], dtype=np.float64)))
        window = max(step - self._last["step"], 1)
        if self._tap.mode is not None:
            preclip = group_norms(stats["preclip_sumsq"], self._groups, count)
            scalars.update({f"grad_norm_preclip/{n}": v for n, v in zip(self._layer_names, preclip)})
            scalars[f"grad_{GLOBAL}/norm_preclip"] = float(np.sqrt(np.sum(stats["preclip_sumsq"], dtype=np.float64)))
            scalars[f"grad_{GLOBAL}/clip_fraction"] = (stats["clipped_steps"] - self._last["clipped_steps"]) / window
        scalars["nonfinite/grad_steps"] = stats["nonfinite_steps"] - self._last["nonfinite_steps"]
        self._last = dict(stats, step=step)
        self.latest_norms = dict(zip(self._layer_names, applied.tolist()))
        with self.writers.writing("train", step) as write:
            write.scalars(scalars)

    def _draw(self, step):
        from keras_bn.callbacks.figures import layer_bar_chart

        if self.latest_norms:
            image = layer_bar_chart(self.latest_norms, ylabel="gradient L2 norm", title=f"step {step}")
            with self.writers.writing("train", step) as write:
                write.image("figures/grad_norms", image)

