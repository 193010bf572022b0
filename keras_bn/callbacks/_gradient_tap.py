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

The statistics are computed with `keras.ops` and stored in the variables of a
`keras_bn.callbacks._tap_state.TapState`: ``ON_READ`` ``tf.Variable``s under a strategy, plain
ones on one TensorFlow device, on JAX ``keras.Variable``s that ride in the optimizer's own
state through the pure, jitted step (``stateless_apply`` returns them), and on PyTorch
``keras.Variable``s assigned in place by the eager ``apply`` of every step (Keras' torch
trainer calls it with ``v.value.grad`` under ``torch.no_grad``; ``steps_per_execution`` must be
1 there).

**Steps since the last read.** The sums of squares are those of the last step (a sample); the
counts (clipped, non-finite, fired) run on, so the callback's difference between two reads
covers every step in between, with ``steps_per_execution > 1`` too; ``peak_sumsq`` keeps the
largest finite applied global sum of squares since the last read (`read` resets it).

**One array.** Everything sits in one float32 vector (on JAX every state array is jit input
and output at every step): the counts are exact integers in float32 below 2**24, and `read`
moves them into host integers once they reach `COUNT_REBASE`, so they stay exact as long as
fewer than 2**24 - 2**22 (12.5 million) steps pass between two reads (an epoch end reads too).

Every record also adds 1 to ``fired_steps``: the callbacks never write a number the tap did not
measure.
"""

from __future__ import annotations


import keras
import numpy as np
from keras import ops

from keras_bn import _keras_internals as internals
from keras_bn import _warnings
from keras_bn import distribute as kb_distribute
from keras_bn.callbacks._tap_state import TapState, is_jax
from keras_bn.optimizers import clipping_of
from keras_bn.callbacks._patch import set_on_instance

__all__ = ["GradientTap", "record_gradients"]

_CLIP_SETTING = ("clipnorm", "global_clipnorm", "clipvalue")


def _values(grad):
    """The dense values of a gradient (a TensorFlow ``IndexedSlices``' rows)."""
    return getattr(grad, "values", grad) if type(grad).__name__ == "IndexedSlices" else grad


def _sumsq(values):
    return ops.sum(ops.square(ops.cast(values, "float32")))


_ROW = 128  # the row length of the fused per-variable sums (JAX)
COUNT_REBASE = 2**22  # `read` moves the device's counts to the host from here (float32 is exact below 2**24)
_COUNTS = 3  # clipped, non-finite, fired


def _sumsq_per_variable(values: dict, size: int):
    """``[sum(values[i] ** 2) for i in range(size)]`` (0 where `values` has no entry i), float32.

    On JAX, where XLA fuses it, as one reduction: every gradient flattened, zero-padded to whole
    rows of `_ROW`, the rows concatenated and summed, then each row's sum added to its
    variable's (``segment_sum``). One reduction per variable instead costs one more XLA kernel
    each, at every step. Elsewhere (TensorFlow's graph, PyTorch's eager steps would copy the
    concatenation) and for shapes only known when the step runs: one reduction per variable."""
    static = all(all(isinstance(d, int) for d in v.shape) for v in values.values())
    if not is_jax() or not static or not values:
        zero = ops.zeros((), "float32")
        return ops.stack([_sumsq(values[i]) if i in values else zero for i in range(size)])
    rows, segments = [], []
    for index, value in values.items():
        flat = ops.reshape(ops.cast(value, "float32"), [-1])
        count = -(-int(flat.shape[0]) // _ROW)
        if count * _ROW != flat.shape[0]:
            flat = ops.pad(flat, [[0, count * _ROW - int(flat.shape[0])]])
        rows.append(ops.reshape(flat, [count, _ROW]))
        segments.extend([index] * count)
    row_sums = ops.sum(ops.square(ops.concatenate(rows, axis=0)), axis=1)
    return ops.segment_sum(row_sums, np.asarray(segments, np.int32), num_segments=size)


class GradientTap:
    """Records, every step, each variable's gradient sum of squares before and after clipping.

    Read with `read` (host values): ``preclip_sumsq`` and ``applied_sumsq`` (one entry per
    variable, in the order given), ``peak_sumsq`` (largest finite applied global sum of squares
    since the previous read), ``clipped_steps``, ``nonfinite_steps`` and ``fired_steps``
    (running counts). `clipping` is `keras_bn.optimizers.clipping_of`'s name; `preclip_known`
    says whether a pre-clip norm is measured. `state` holds the variable (`TapState`): `stats`.
    """

    backends = ("tensorflow", "jax", "torch")  # where StepTaps runs it

    def __init__(self, optimizer, variables):
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
            if not is_jax():
                self._position.setdefault(id(getattr(v, "value", v)), i)  # the tf.Variable under a Keras one
        size = self._size = len(variables)
        self.state = state = TapState(self.strategy)
        # One array: [pre-clip sums | applied sums, when clipping is measured | peak | clipped,
        # non-finite and fired counts] (see "One array" above).
        self._separate_applied = self.clipping != "none" and self.preclip_known
        self._peak_index = size * (2 if self._separate_applied else 1)
        self.stats = state.floats("keras_bn_gradient_stats", [self._peak_index + 1 + _COUNTS])
        self._count_base = np.zeros(_COUNTS, np.int64)  # counts moved to the host (`read`)
        position = np.arange(self._peak_index + 1 + _COUNTS)
        self._is_sum, self._is_peak = position < self._peak_index, position == self._peak_index
        self._undo = None
        self.traced_records = 0
        if self.strategy is not None and hook is None and not internals.has_aggregation_point(optimizer):
            _warnings.warn(
                "keras_bn GradientNorms: this Keras has no aggregation point the tap can read; "
                "the logged norms are of one replica's share of the gradient, before the "
                "cross-replica sum.",
                RuntimeWarning,
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

        def apply(grads, trainable_variables=None):
            variables = trainable_variables if trainable_variables is not None else internals.optimizer_variables_default(optimizer)
            self.record(list(grads), list(variables))
            return original_apply(grads, trainable_variables)

        self._undo = set_on_instance(optimizer, "apply", apply)

    def unpatch(self) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    def _record_summed_preclip(self, grads, variables) -> None:
        self.record(grads, variables, unscale=False)  # ``apply`` divided by the loss scale already

    def _record_summed_applied(self, grads, variables) -> None:
        self.record(grads, variables, unscale=False, already_clipped=True)

    # --- what is recorded -------------------------------------------------------------------
    def _index(self, variable, order: int):
        index = self._position.get(id(variable))
        if index is None and not is_jax():
            index = self._position.get(id(getattr(variable, "value", variable)))
        if index is None and not isinstance(variable, keras.Variable) and order < self._size:
            index = order  # a custom JAX loop passes the variables' values, in their order
        return index

    def record(self, grads, variables, unscale: bool = True, already_clipped: bool = False) -> None:
        """Store this step's per-variable sums of squares (before and after clipping);
        `unscale` divides by the optimizer's ``loss_scale_factor`` (as ``apply`` does);
        `already_clipped`: the gradients are the applied ones (Keras' per-replica clipping)."""
        if keras.backend.backend() != "torch":  # torch.compile would guard on (and recompile for) it
            self.traced_records += 1  # Python runs this only while a step is traced
        seen, clip_values = {}, []
        for order, (grad, variable) in enumerate(zip(grads, variables)):
            index = self._index(variable, order)
            if grad is None or index is None:
                continue
            seen[index] = _values(grad)
            if self.clipping == "value":
                clip_values.append((index, grad))
        sumsq = _sumsq_per_variable(seen, self._size)
        scale = getattr(self.optimizer, "loss_scale_factor", None) if unscale else None
        if scale is not None:
            sumsq = sumsq / float(scale) ** 2
        global_sumsq = ops.sum(sumsq)
        parts, applied_global = [sumsq], global_sumsq
        clipped = ops.convert_to_tensor(False)
        if self.clipping != "none" and not already_clipped:
            applied, clipped = self._applied(sumsq, global_sumsq, clip_values)
            # Without a separate slot (a replica's share, no aggregation point) the applied sums.
            parts = [sumsq, applied] if self._separate_applied else [applied]
            applied_global = ops.sum(applied)
        # Elementwise in the previous values (no concatenation of them), so that XLA updates
        # the donated array in place: [sums | max(peak, finite global) | counts + increments].
        previous = ops.convert_to_tensor(self.stats)
        at = self._peak_index
        new_sums = ops.concatenate(parts + [ops.zeros([1 + _COUNTS], "float32")])
        increments = ops.concatenate([ops.zeros([at + 1], "float32"), ops.stack([
            ops.cast(clipped, "float32"), ops.cast(ops.logical_not(ops.isfinite(global_sumsq)), "float32"),
            ops.ones((), "float32")])])
        peak = ops.where(ops.isfinite(applied_global), ops.maximum(previous, applied_global), previous)
        self.stats.assign(ops.where(self._is_sum, new_sums, ops.where(self._is_peak, peak, previous + increments)))

    def _applied(self, preclip, global_sumsq, clip_values):
        """Sums of squares after Keras' clipping, and whether clipping engaged this step."""
        if self.clipping == "per_variable":
            limit = float(self.optimizer.clipnorm) ** 2
            return ops.minimum(preclip, limit), ops.any(preclip > limit)
        if self.clipping == "global":
            limit = float(self.optimizer.global_clipnorm)
            norm = ops.sqrt(global_sumsq)
            factor = limit * ops.minimum(1.0 / norm, 1.0 / limit)
            return preclip * ops.square(factor), norm > limit
        if self.clipping == "value":
            limit = float(self.optimizer.clipvalue)
            applied = list(ops.unstack(preclip)) if clip_values else []  # a tuple on torch
            engaged = ops.convert_to_tensor(False)
            for index, grad in clip_values:
                values = _values(grad)
                applied[index] = _sumsq(ops.clip(values, -limit, limit))
                engaged = ops.logical_or(engaged, ops.max(ops.abs(values)) > limit)
            return (ops.stack(applied) if applied else preclip), engaged
        raise ValueError(f"unknown clipping {self.clipping!r}")

    def read(self) -> dict:
        """The current statistics as NumPy values (a few small reads); resets ``peak_sumsq``.
        On JAX inside an epoch, from the trainer's state without a sync."""
        size, measured_clip, at = self._size, self.clipping != "none" and self.preclip_known, self._peak_index
        stats = self.state.take(self.stats, zero_at=(at,))  # the peak starts again after a read
        sums, peak, device_counts = stats[:at], float(stats[at]), stats[at + 1:].astype(np.int64)
        counts = self._count_base + device_counts
        if int(device_counts.max()) >= COUNT_REBASE:  # rare: the counts move to the host
            self._count_base = counts
            rebased = np.zeros_like(stats)
            rebased[:at] = sums
            self.state.set(self.stats, rebased)
        preclip = sums[:size]
        return {
            "preclip_sumsq": preclip,
            "applied_sumsq": sums[size:2 * size] if measured_clip else preclip,
            "peak_sumsq": peak,
            "clipped_steps": int(counts[0]) if measured_clip else 0,
            "nonfinite_steps": int(counts[1]),
            "fired_steps": int(counts[2]),
        }


def record_gradients(model, grads, variables, optimizer_variables=None):
    """Record this step's gradients for the diagnostics, from inside a custom training step.

    ``fit`` needs no call: its steps are tapped. A custom loop calls it inside its (traced) step
    with the gradients it applies; the callbacks must have begun (``on_train_begin``) before the
    step is traced. Without a `GradientNorms` attached it warns once and records nothing.

    On JAX the step is pure: pass the step's `optimizer_variables` (the values of
    ``model.optimizer.variables``, taken after ``on_train_begin``, which adds the tap's) and use
    the list it returns; `variables` may be the trainable values, in
    ``model.trainable_variables`` order. Assign the state back to ``model.optimizer.variables``
    before a callback reads it (a logging step's ``on_train_batch_begin``, the epoch end).

    Usage (TensorFlow)::

        grads = tape.gradient(loss, model.trainable_variables)
        keras_bn.callbacks.record_gradients(model, grads, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    Usage (JAX, inside the jitted step)::

        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        optimizer_values = keras_bn.callbacks.record_gradients(model, grads, trainable, optimizer_values)
        trainable, optimizer_values = optimizer.stateless_apply(optimizer_values, grads, trainable)
    """
    from keras_bn.callbacks._taps import StepTaps

    tap = StepTaps.of(model).current_gradient_tap()
    if tap is None:
        _warnings.warn(
            "keras_bn record_gradients: no GradientNorms callback has begun on this model, so "
            "nothing is recorded. Call the callbacks' on_train_begin() (e.g. through "
            "keras.callbacks.CallbackList(callbacks, model=model)) before your step is traced.",
            UserWarning,
        )
        return optimizer_variables
    if is_jax() and optimizer_variables is not None:
        optimizer = model.optimizer
        mapping = list(zip(optimizer.variables, optimizer_variables))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            tap.record(list(grads), list(variables))
        return [scope.get_current_value(v) for v in optimizer.variables]
    if is_jax() and any(_is_traced(g) for g in grads):
        raise ValueError(
            "keras_bn record_gradients: on JAX, inside a traced (jitted) step, pass the step's "
            "optimizer state and use the one returned: `optimizer_values = record_gradients(model, "
            "grads, trainable_values, optimizer_values)`. Received: optimizer_variables=None"
        )
    tap.record(list(grads), list(variables))
    return optimizer_variables


def _is_traced(value) -> bool:
    import jax

    return isinstance(value, jax.core.Tracer)
