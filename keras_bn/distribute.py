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
point where they apply moves after the cross-replica sum. It is always an explicit choice:
`clip_after_aggregation`, which `keras_bn.optimizers.adam` applies when it is called inside a
strategy scope. Observing never changes it: `GradientNorms` reads the summed gradient wherever
clipping is, and reports which clipping is in effect (keras_bn.callbacks._gradient_tap).
Without a strategy nothing is patched. The private names live in keras_bn._keras_internals;
if the installed Keras lacks them the hook is not installed and `AggregationHook.supported`
says so.

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

from keras_bn import _keras_internals as internals
from keras_bn import _warnings

__all__ = [
    "AggregationHook", "MIXED_PRECISION", "STRATEGIES", "apply_keras_compat", "clip_after_aggregation",
    "compat_used", "is_chief", "is_distributed", "make_strategy", "optimizer_strategy", "scope",
    "set_mixed_precision",
]

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
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"`strategy={name!r}` is a tf.distribute strategy: it needs the TensorFlow backend, and this "
            f"process runs KERAS_BACKEND={keras.backend.backend()}. On {keras.backend.backend()}, spread the "
            f"batch over devices with keras.distribution.set_distribution(keras.distribution.DataParallel()) "
            f"before building the model (docs/BACKENDS.md). Received: strategy={name!r}")
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
    return strategy is not None and not internals.is_default_strategy(strategy)


def optimizer_strategy(optimizer):
    """The strategy `optimizer` was created under (None when there was none)."""
    strategy = internals.optimizer_strategy_object(optimizer)
    return strategy if is_distributed(strategy) else None


# --- clipping after the cross-replica sum -------------------------------------------------
class AggregationHook:
    """Sums gradients across replicas, shows the sum to observers, then clips it.

    Installed on one optimizer instance by `clip_after_aggregation` (an explicit choice; the
    diagnostics never install it); `observers` are called as ``observer(grads, variables)``
    with the summed gradients inside the compiled step (replica context; the value is the same
    on every replica). The variables are the optimizer's ``tf.Variable``s
    (``keras_variable.value``).
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.observers: list = []
        self.keep = True
        self._undo = None

    @staticmethod
    def supported(optimizer) -> bool:
        """Whether the installed Keras has the private methods the hook wraps."""
        return internals.has_aggregation_point(optimizer)

    @classmethod
    def of(cls, optimizer, create: bool = True):
        """The hook installed on `optimizer` (installing one when `create`), or None."""
        hook = optimizer.__dict__.get(_HOOK_ATTR)
        if hook is None and create and cls.supported(optimizer):
            hook = cls(optimizer)
            hook._install()
        return hook

    def _show(self, grads, variables) -> None:
        for observer in list(self.observers):
            observer(grads, variables)

    def _install(self) -> None:
        self._undo = internals.wrap_aggregation(self.optimizer, self._show, clip_after_sum=True)
        self.optimizer.__dict__[_HOOK_ATTR] = self

    def release(self) -> None:
        """Uninstall: Keras clips each replica's share again."""
        if self._undo is not None:
            self._undo()
            self._undo = None
        self.optimizer.__dict__.pop(_HOOK_ATTR, None)


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
            _warnings.warn(
                "keras_bn: this Keras has no `_all_reduce_sum_gradients`; under a strategy Keras "
                "clips each replica's gradient before the sum (tensorflow#33929).",
                RuntimeWarning,
            )
    return optimizer


# --- Keras multi-worker compatibility (keras-team/keras#20585, tensorflow#72388) -------------
def compat_used() -> set[str]:
    """Which compatibility fallbacks have run in this process: "symbolic_build" (keras#20585),
    "reduce_scalar" (tensorflow#72388). Empty when Keras' own code worked."""
    return internals.multiworker_compat_used()


def apply_keras_compat() -> bool:
    """Wrap Keras' ``_maybe_symbolic_build`` and ``reduce_per_replica`` (once per process) so
    multi-worker ``fit`` works; returns whether the wrappers are in place (False when this
    Keras lacks the functions, i.e. its code changed and the fix does not apply). Each wrapper
    runs Keras' own code first and falls back only on the known error."""
    return internals.apply_multiworker_compat()
