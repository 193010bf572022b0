"""tf.distribute and mixed precision for keras-bn: strategies, clipping after aggregation,
the chief check, and a narrow fix for Keras' multi-worker ``fit``.

**Where gradients are aggregated.** Under a strategy every replica runs ``optimizer.apply``
with its own share of the gradient (the loss is already divided by the number of replicas);
Keras' TF optimizer clips that share (``_clip_gradients``) and only then sums the shares
across replicas in its private ``_all_reduce_sum_gradients`` (called by
``_backend_update_step``). Clipping each share is the bug that made TensorFlow disable
clipping under strategies (tensorflow#33929): with ``clipnorm=c`` and R replicas the applied
norm can reach ``R * c``. `AggregationHook` moves it: on the optimizer *instance* it turns
``_clip_gradients`` into the identity and wraps ``_all_reduce_sum_gradients`` so that it sums
first, shows the summed (global-batch) gradients to its observers (`GradientNorms`), then
clips them with Keras' own ``_clip_gradients``. Keras' clipping rules are unchanged; only the
point where they apply moves after the cross-replica sum. `keras_bn.optimizers.adam` installs
it when it is called inside a strategy scope; `GradientNorms` installs it (with a warning if
the optimizer clips) when the model trains under a strategy. Without a strategy nothing is
patched. The hook is version-guarded: if the installed Keras has no
``_all_reduce_sum_gradients``/``_clip_gradients`` it is not installed and
`AggregationHook.supported` says so.

**Multi-worker fit** (keras-team/keras#20585, tensorflow#72388): with
``MultiWorkerMirroredStrategy`` on several workers, ``TensorFlowTrainer._maybe_symbolic_build``
fails with "Attempt to convert a value (PerReplica...)" and then ``reduce_per_replica(...,
reduction="auto")`` fails with "Invalid reduction dimension 0" on the scalar logs.
`apply_keras_compat` wraps both (class/module attributes, once): each wrapper first runs
Keras' own code and only when it raises *that* error does it redo the step the working way
(build from the first local replica's batch; reduce a scalar with ``axis=None``). So a fixed
Keras is never patched in effect, and `compat_used()` tells which fallback ran; the
multi-worker test fails when none is needed any more, to say the fix can go.

Usage::

    strategy = keras_bn.distribute.make_strategy("mirrored")        # or "multiworker", "none"
    with keras_bn.distribute.scope(strategy):
        model = keras_bn.build_dense((784,), [64, 64], 10, norm="sync_batch")
        model.compile(optimizer=keras_bn.optimizers.adam("global_clip"), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=256, callbacks=keras_bn.callbacks.diagnostics("logs/run"))
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings

STRATEGIES = ("none", "mirrored", "multiworker")
MIXED_PRECISION = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}

_HOOK_ATTR = "_keras_bn_aggregation_hook"


# --- strategies, chief, mixed precision -----------------------------------------------
def make_strategy(name: str | None):
    """The strategy called `name`: None for "none"/None, ``MirroredStrategy()`` for "mirrored"
    (every local device), ``MultiWorkerMirroredStrategy()`` for "multiworker" (reads TF_CONFIG;
    also applies `apply_keras_compat`)."""
    from keras_bn._validation import check_choice

    name = "none" if name is None else name
    check_choice("strategy", name, STRATEGIES)
    if name == "none":
        return None
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    apply_keras_compat()
    return tf.distribute.MultiWorkerMirroredStrategy()


def scope(strategy):
    """``strategy.scope()``, or a no-op context for None."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def set_mixed_precision(name: str | None) -> str:
    """Set Keras' global dtype policy: "float16" -> mixed_float16, "bfloat16" ->
    mixed_bfloat16, None -> float32 (undoes an earlier call). Returns the policy's name."""
    import keras

    from keras_bn._validation import check_choice

    if name is not None:
        check_choice("mixed_precision", name, tuple(MIXED_PRECISION))
    keras.mixed_precision.set_global_policy(MIXED_PRECISION[name] if name is not None else "float32")
    return keras.mixed_precision.global_policy().name


def is_chief(tf_config: str | None = None) -> bool:
    """True unless TF_CONFIG names this process a non-chief task (Keras' convention: the
    "chief" task, or worker 0 when the cluster has no chief)."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw:
        return True
    config = json.loads(raw)
    task = config.get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind in (None, "chief"):
        return True
    if kind == "worker":
        return index == 0 and "chief" not in (config.get("cluster") or {})
    return False  # evaluator, ps


def is_distributed(strategy) -> bool:
    """True for any strategy but TF's default (no-op) one."""
    return strategy is not None and type(strategy).__name__ != "_DefaultDistributionStrategy"


def optimizer_strategy(optimizer):
    """The strategy `optimizer` was created under (None when there was none)."""
    strategy = getattr(optimizer, "_distribution_strategy", None)
    return strategy if is_distributed(strategy) else None


# --- clipping after the cross-replica sum -------------------------------------------------
class AggregationHook:
    """Sums gradients across replicas, shows the sum to observers, then clips it.

    Installed on one optimizer instance (`install`); `observers` are called as
    ``observer(grads, variables)`` with the summed gradients inside the compiled step (replica
    context; the value is the same on every replica). The variables are the optimizer's
    ``tf.Variable``s (``keras_variable.value``).
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.observers: list = []
        self.keep = False  # installed by a clipping preset: stays after the observers leave

    @staticmethod
    def supported(optimizer) -> bool:
        """Whether the installed Keras has the private methods the hook wraps."""
        cls = type(optimizer)
        return callable(getattr(cls, "_all_reduce_sum_gradients", None)) and callable(getattr(cls, "_clip_gradients", None))

    @classmethod
    def of(cls, optimizer, create: bool = True):
        """The hook installed on `optimizer` (installing one when `create`), or None."""
        hook = optimizer.__dict__.get(_HOOK_ATTR)
        if hook is None and create and cls.supported(optimizer):
            hook = cls(optimizer)
            hook._install()
        return hook

    def _install(self) -> None:
        optimizer = self.optimizer
        cls = type(optimizer)
        original_reduce = cls._all_reduce_sum_gradients.__get__(optimizer)
        original_clip = cls._clip_gradients.__get__(optimizer)

        def _all_reduce_sum_gradients(grads_and_vars):
            reduced = list(original_reduce(grads_and_vars))
            grads = [g for g, _ in reduced]
            variables = [v for _, v in reduced]
            for observer in list(self.observers):
                observer(grads, variables)
            present = [i for i, g in enumerate(grads) if g is not None]
            clipped = original_clip([grads[i] for i in present]) if present else []
            for i, g in zip(present, clipped):
                grads[i] = g
            return list(zip(grads, variables))

        optimizer.__dict__[_HOOK_ATTR] = self
        optimizer._clip_gradients = lambda grads: grads  # clipped after the sum instead
        optimizer._all_reduce_sum_gradients = _all_reduce_sum_gradients

    def release(self) -> None:
        """Uninstall unless a preset asked to keep it or observers remain."""
        if self.keep or self.observers:
            return
        for name in ("_clip_gradients", "_all_reduce_sum_gradients", _HOOK_ATTR):
            self.optimizer.__dict__.pop(name, None)


def clip_after_aggregation(optimizer):
    """Make `optimizer` clip the cross-replica sum of the gradients (the global batch's
    gradient) instead of each replica's share; a no-op outside a strategy. Returns it.

    Example::

        with strategy.scope():
            opt = clip_after_aggregation(keras.optimizers.Adam(1e-3, global_clipnorm=1.0))
    """
    if optimizer_strategy(optimizer) is not None:
        hook = AggregationHook.of(optimizer)
        if hook is None:
            warnings.warn(
                "keras_bn: this Keras has no `_all_reduce_sum_gradients`; under a strategy Keras "
                "clips each replica's gradient before the sum (tensorflow#33929).",
                RuntimeWarning, stacklevel=2,
            )
        else:
            hook.keep = True
    return optimizer


# --- Keras multi-worker compatibility (keras-team/keras#20585, tensorflow#72388) -------------
_COMPAT_LOCK = threading.Lock()
_COMPAT_APPLIED = False
_COMPAT_USED: set[str] = set()


def compat_used() -> set[str]:
    """Which compatibility fallbacks have run in this process: "symbolic_build" (keras#20585),
    "reduce_scalar" (tensorflow#72388). Empty when Keras' own code worked."""
    return set(_COMPAT_USED)


def _local_first(strategy, batch):
    import tensorflow as tf
    from keras.src import tree

    def first(x):
        if isinstance(x, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(x)[0]
        return x

    return tree.map_structure(first, batch)


def apply_keras_compat() -> bool:
    """Wrap Keras' ``_maybe_symbolic_build`` and ``reduce_per_replica`` (once per process) so
    multi-worker ``fit`` works; returns whether the wrappers are in place (False when this
    Keras lacks the functions, i.e. its code changed and the fix does not apply)."""
    global _COMPAT_APPLIED
    with _COMPAT_LOCK:
        if _COMPAT_APPLIED:
            return True
        try:
            from keras.src.backend.tensorflow import trainer as tf_trainer
        except ImportError:
            return False
        trainer_cls = getattr(tf_trainer, "TensorFlowTrainer", None)
        original_build = getattr(trainer_cls, "_maybe_symbolic_build", None)
        original_reduce = getattr(tf_trainer, "reduce_per_replica", None)
        multi_worker = getattr(tf_trainer, "_collective_all_reduce_multi_worker", None)
        if not (callable(original_build) and callable(original_reduce) and callable(multi_worker)):
            return False

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            strategy = getattr(self, "_distribute_strategy", None)
            if iterator is None or strategy is None or not multi_worker(strategy):
                return original_build(self, iterator=iterator, data_batch=data_batch)
            try:
                return original_build(self, iterator=iterator, data_batch=data_batch)
            except (TypeError, ValueError) as error:
                if "PerReplica" not in str(error):
                    raise
            _COMPAT_USED.add("symbolic_build")
            for _, _, it in iterator:
                data_batch = _local_first(strategy, next(it))
                break
            with strategy.scope():
                self._symbolic_build(data_batch=data_batch)

        def reduce_per_replica(values, strategy, reduction):
            if reduction not in ("auto", "mean") or not multi_worker(strategy):
                return original_reduce(values, strategy, reduction)
            from keras.src import tree

            def reduce_one(value):
                try:
                    return original_reduce(value, strategy, reduction)
                except ValueError as error:
                    if "reduction dimension" not in str(error):
                        raise
                _COMPAT_USED.add("reduce_scalar")
                return strategy.reduce("MEAN", value, axis=None)

            return tree.map_structure(reduce_one, values)

        _maybe_symbolic_build._keras_bn_original = original_build
        reduce_per_replica._keras_bn_original = original_reduce
        trainer_cls._maybe_symbolic_build = _maybe_symbolic_build
        tf_trainer.reduce_per_replica = reduce_per_replica
        _COMPAT_APPLIED = True
        return True
