"""GradientTap: per-variable gradient statistics recorded inside the real training step.

**Where the gradients are seen.** Without a distribution strategy the tap wraps
``optimizer.apply(grads, variables)`` on the instance, only while a step of ``fit`` runs (see
`keras_bn.callbacks._taps`): it is the one public call every Keras 3 train step makes with
exactly that step's gradients, *before* clipping, so both the pre-clip norm and the applied norm
are known (the applied one follows from Keras' rules: ``clipnorm``, each variable's norm becomes
``min(n, c)``; ``global_clipnorm``, every norm is scaled by ``min(1, c / global)``;
``clipvalue``, computed from the clipped values). The loss scale of mixed precision is divided
out, as ``apply`` does.

**Under tf.distribute** ``apply`` runs once per replica with that replica's share, and Keras
clips each share before the cross-replica sum (tensorflow#33929). Observing never changes
that: the tap reads the *summed* gradient (the global batch's, what the optimizer applies) at the
aggregation point and leaves clipping where the user put it:

- the user chose clipping after the sum (`keras_bn.distribute.clip_after_aggregation`, which
  `keras_bn.optimizers.adam` applies inside a strategy scope): the tap sees the sum before
  clipping; pre-clip and applied norms are both exact, as on one device;
- Keras' own per-replica clipping: the applied norms are exact (the sum of the clipped shares);
  a global pre-clip norm exists nowhere (no unclipped sum is ever computed), so the pre-clip
  tags and the clip fraction are not written and `clip_point` says "each replica's share";
- no clipping: pre-clip = applied, exact.

The statistics live in ``ON_READ`` variables under a strategy (every replica writes the same
sum into its own copy; reading one costs no collective).

Every record also adds 1 to ``fired_steps``: the callbacks never write a number the tap did not
measure.
"""

from __future__ import annotations

import warnings

from keras_bn import _keras_internals as internals
from keras_bn import distribute as kb_distribute
from keras_bn.optimizers import clipping_of

__all__ = ["GradientTap"]

_CLIP_SETTING = ("clipnorm", "global_clipnorm", "clipvalue")
# The backends this tap records on (docs/BACKENDS.md); another refuses at the callback's first fit.
BACKENDS = ("tensorflow",)


class GradientTap:
    """Records, every step, each variable's gradient sum of squares before and after clipping.

    Read with `read` (host values): ``preclip_sumsq`` and ``applied_sumsq`` (one entry per
    variable, in the order given), ``clipped_steps``, ``nonfinite_steps`` and ``fired_steps``
    (running counts). `clipping` is `keras_bn.optimizers.clipping_of`'s name; `preclip_known`
    says whether a pre-clip norm is measured.
    """

    def __init__(self, optimizer, variables):
        import keras

        if keras.backend.backend() not in BACKENDS:
            raise NotImplementedError(
                f"keras-bn's gradient tap (grad_norm/, update_ratio/ and clip/ statistics: GradientNorms, "
                f"UpdateRatio, diagnostics() and the doctor preset) runs on the {' and '.join(BACKENDS)} backend "
                f"only in this version; this process runs KERAS_BACKEND={keras.backend.backend()}. Run with "
                f"KERAS_BACKEND=tensorflow, or on {keras.backend.backend()} use the callbacks that do not tap the "
                f"step (ActivationStats). See docs/BACKENDS.md.")
        import tensorflow as tf

        self._tf = tf
        self.optimizer = optimizer
        self._setting = self._current_setting()
        self.clipping = clipping_of(optimizer)
        self.strategy = kb_distribute.optimizer_strategy(optimizer)
        hook = kb_distribute.AggregationHook.of(optimizer, create=False) if self.strategy is not None else None
        if self.strategy is None:
            self.clip_point = "one device"
        elif hook is not None:
            self.clip_point = "global batch (after the cross-replica sum)"
        else:
            self.clip_point = "each replica's share (Keras' default under a strategy)"
        self._hook = hook
        self.preclip_known = self.clipping == "none" or self.strategy is None or hook is not None
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
            if self.clipping != "none" and self.preclip_known:
                self.applied_sumsq = tf.Variable(tf.zeros([size]), trainable=False, name="keras_bn_applied_sumsq", **options)
            counter = dict(initial_value=tf.constant(0, tf.int64), trainable=False, **options)
            self.clipped_steps = tf.Variable(**counter, name="keras_bn_clipped_steps")
            self.nonfinite_steps = tf.Variable(**counter, name="keras_bn_nonfinite_steps")
            self.fired_steps = tf.Variable(**counter, name="keras_bn_fired_steps")
        self._undo = None
        self.traced_records = 0
        if self.strategy is not None and hook is None and not internals.has_aggregation_point(optimizer):
            warnings.warn(
                "keras_bn GradientNorms: this Keras has no aggregation point the tap can read; "
                "the logged norms are of one replica's share of the gradient, before the "
                "cross-replica sum.",
                RuntimeWarning, stacklevel=3,
            )

    def _current_setting(self):
        return tuple(getattr(self.optimizer, k, None) for k in _CLIP_SETTING) + (getattr(self.optimizer, "loss_scale_factor", None),)

    def same_setting(self) -> bool:
        """False when the optimizer's clipping changed since the tap was made (make a new one)."""
        return self._current_setting() == self._setting

    # --- patches, applied by StepTaps only while a step runs --------------------------------
    def patch(self) -> None:
        if self._undo is not None:
            return
        optimizer = self.optimizer
        if self.strategy is not None and self._hook is not None:
            observer = self._record_summed_preclip
            self._hook.observers.append(observer)
            self._undo = lambda: self._hook.observers.remove(observer)
            return
        if self.strategy is not None and internals.has_aggregation_point(optimizer):
            self._undo = internals.wrap_aggregation(optimizer, self._record_summed_applied, clip_after_sum=False)
            return
        original_apply = optimizer.apply
        had_own = "apply" in vars(optimizer)

        def apply(grads, trainable_variables=None):
            variables = trainable_variables if trainable_variables is not None else internals.optimizer_variables_default(optimizer)
            self.record(list(grads), list(variables))
            return original_apply(grads, trainable_variables)

        optimizer.apply = apply

        def undo():
            if had_own:
                optimizer.apply = original_apply
            else:
                vars(optimizer).pop("apply", None)

        self._undo = undo

    def unpatch(self) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    def _record_summed_preclip(self, grads, variables) -> None:
        self.record(grads, variables, unscale=False)  # ``apply`` divided by the loss scale already

    def _record_summed_applied(self, grads, variables) -> None:
        self.record(grads, variables, unscale=False, already_clipped=True)

    # --- what is recorded -------------------------------------------------------------------
    def _half_sumsq(self, grad):
        tf = self._tf
        values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
        return tf.nn.l2_loss(tf.cast(values, tf.float32))  # one op: sum(g**2) / 2

    def record(self, grads, variables, unscale: bool = True, already_clipped: bool = False) -> None:
        """Store this step's per-variable sums of squares (before and after clipping);
        `unscale` divides by the optimizer's ``loss_scale_factor`` (as ``apply`` does);
        `already_clipped`: the gradients are the applied ones (Keras' per-replica clipping)."""
        tf = self._tf
        self.traced_records += 1  # Python runs this only while a step is traced
        zero = tf.constant(0.0)
        sumsq = [zero] * self._size
        clip_values = []
        for grad, variable in zip(grads, variables):
            index = self._position.get(id(variable))
            if index is None:
                index = self._position.get(id(getattr(variable, "value", variable)))
            if grad is None or index is None:
                continue
            sumsq[index] = self._half_sumsq(grad)
            if self.clipping == "value":
                clip_values.append((index, grad))
        sumsq = 2.0 * tf.stack(sumsq)
        scale = getattr(self.optimizer, "loss_scale_factor", None) if unscale else None
        if scale is not None:
            sumsq = sumsq / float(scale) ** 2
        global_sumsq = tf.reduce_sum(sumsq)
        self.preclip_sumsq.assign(sumsq)
        if self.clipping != "none" and not already_clipped:
            applied, clipped = self._applied(sumsq, global_sumsq, clip_values)
            self.applied_sumsq.assign(applied)
            self.clipped_steps.assign_add(tf.cast(clipped, tf.int64))
        self.nonfinite_steps.assign_add(tf.cast(tf.logical_not(tf.math.is_finite(global_sumsq)), tf.int64))
        self.fired_steps.assign_add(tf.constant(1, tf.int64))

    def _applied(self, preclip, global_sumsq, clip_values):
        """Sums of squares after Keras' clipping, and whether clipping engaged this step."""
        tf = self._tf
        if self.clipping == "per_variable":
            limit = float(self.optimizer.clipnorm) ** 2
            return tf.minimum(preclip, limit), tf.reduce_any(preclip > limit)
        if self.clipping == "global":
            limit = float(self.optimizer.global_clipnorm)
            norm = tf.sqrt(global_sumsq)
            factor = limit * tf.minimum(1.0 / norm, 1.0 / limit)
            return preclip * tf.square(factor), norm > limit
        if self.clipping == "value":
            limit = float(self.optimizer.clipvalue)
            applied = tf.unstack(preclip) if clip_values else []
            engaged = tf.constant(False)
            for index, grad in clip_values:
                values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
                applied[index] = 2.0 * self._half_sumsq(tf.clip_by_value(values, -limit, limit))
                engaged = tf.logical_or(engaged, tf.reduce_max(tf.abs(values)) > limit)
            return (tf.stack(applied) if applied else preclip), engaged
        raise ValueError(f"unknown clipping {self.clipping!r}")

    def read(self) -> dict:
        """The current statistics as NumPy values (three small reads when nothing clips)."""
        preclip = self.preclip_sumsq.numpy()
        measured_clip = self.clipping != "none" and self.preclip_known
        return {
            "preclip_sumsq": preclip,
            "applied_sumsq": self.applied_sumsq.numpy() if measured_clip else preclip,
            "clipped_steps": int(self.clipped_steps.numpy()) if measured_clip else 0,
            "nonfinite_steps": int(self.nonfinite_steps.numpy()),
            "fired_steps": int(self.fired_steps.numpy()),
        }
