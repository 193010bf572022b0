"""Where a tap's statistics live, per Keras backend: the one backend-specific part of a tap.

A tap computes its statistics with `keras.ops` inside ``optimizer.apply`` (see
keras_bn.callbacks._gradient_tap); only the variables it writes differ by backend:

- **TensorFlow**: ``tf.Variable``s of their own, assigned inside the traced step (under a
  tf.distribute strategy ``ON_READ`` ones: every replica writes the same sum into its own copy,
  a read takes the first and costs no collective).
- **JAX**: the train step is pure and jitted; ``optimizer.stateless_apply`` runs ``apply`` in a
  ``StatelessScope`` and returns the new value of every variable in ``optimizer.variables``.
  So the tap's ``keras.Variable``s are appended to the optimizer's own variable list while a fit
  uses them (`attach` / `detach`): they travel through the jitted step as optimizer state and
  come back with every step. Saving never sees them: the optimizers' ``save_own_variables`` /
  ``load_own_variables`` skip them while attached, so a ``.keras`` file (ModelCheckpoint inside
  the fit included) has exactly the optimizer variables Keras made and loads without keras-bn.
  On JAX the variables hold the step's values only after a state sync (reading
  ``Callback.model`` does one): the callbacks read at their logging cadence only.
- **PyTorch**: the trainer calls ``optimizer.apply`` eagerly (under ``torch.no_grad``), so
  the tap's statistics are plain ``keras.Variable``s (torch tensors on the model's device),
  assigned in place at every step; nothing joins the optimizer state, so saving never sees
  them. A read converts on the host (``keras.ops.convert_to_numpy``): one device sync, at the
  logging cadence only.

Usage (inside a tap)::

    state = TapState(strategy=None)
    sumsq = state.floats("keras_bn_preclip_sumsq", [3])
    state.attach(optimizer, [model.optimizer])    # JAX: part of the optimizer state now
    state.numpy(sumsq)
"""

from __future__ import annotations

import keras
import numpy as np

from keras_bn import _keras_internals as internals
from keras_bn import distribute as kb_distribute

__all__ = ["TapState", "is_jax", "is_tensorflow"]


def is_jax() -> bool:
    """Whether Keras runs on JAX (taps keep their state in optimizer variables there)."""
    return keras.backend.backend() == "jax"


def is_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow (taps keep their state in ``tf.Variable``s there)."""
    return keras.backend.backend() == "tensorflow"


class TapState:
    """The variables of one tap, made for the current backend (and tf.distribute strategy)."""

    def __init__(self, strategy=None):
        self.strategy = strategy
        self.variables: list = []
        self._attached = None  # (host variable list, undo functions) while attached

    # --- making variables ----------------------------------------------------------------
    def floats(self, name: str, shape):
        """A float32 variable of zeros."""
        return self._make(name, np.zeros(shape, np.float32))

    def counters(self, name: str, count: int):
        """`count` integer counters at 0, in one vector (int32 on JAX: no x64 there by default;
        int64 elsewhere)."""
        return self._make(name, np.zeros([count], np.int32 if is_jax() else np.int64))

    def _make(self, name, initial):
        if not is_tensorflow():
            variable = keras.Variable(initial, dtype=str(initial.dtype), trainable=False, name=name)
        else:
            import tensorflow as tf

            options = {}
            if self.strategy is not None:
                options = dict(synchronization=tf.VariableSynchronization.ON_READ,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            with kb_distribute.scope(self.strategy):
                variable = tf.Variable(initial, trainable=False, name=name, **options)
        self.variables.append(variable)
        return variable

    # --- reading and resetting from the host ----------------------------------------------
    @staticmethod
    def numpy(variable):
        if is_tensorflow():
            return np.asarray(variable.numpy())
        return np.asarray(keras.ops.convert_to_numpy(variable.value))  # a torch tensor: off its device

    @classmethod
    def reset(cls, variable, value) -> None:
        """Set `variable` from the host (an accumulator after its read). On JAX the new value is
        computed from the current device array, so it keeps that array's placement: a value
        made from host data would be a different jit argument and recompile the step."""
        if is_jax():
            variable.assign(variable.value * 0 + np.asarray(value, dtype=cls.numpy(variable).dtype))
        else:
            variable.assign(np.asarray(value, dtype=cls.numpy(variable).dtype))

    # --- JAX: the variables as optimizer state ---------------------------------------------
    @property
    def attached(self) -> bool:
        return self._attached is not None

    def attach(self, host_optimizer, savers) -> None:
        """JAX only: make the variables part of `host_optimizer`'s state (its ``variables``),
        hidden from the ``save_own_variables`` / ``load_own_variables`` of every optimizer in
        `savers` (the model's optimizer and its inner ones). No-op elsewhere or if attached."""
        if not is_jax() or self._attached is not None or not self.variables:
            return
        own = internals.optimizer_variable_list(host_optimizer)
        own.extend(self.variables)
        undo = [self._hide_from_saving(optimizer, own) for optimizer in _unique(savers + [host_optimizer])]
        self._attached = (own, undo)

    def detach(self) -> None:
        """Take the variables out of the optimizer state again (their values stay)."""
        if self._attached is None:
            return
        own, undo = self._attached
        self._attached = None
        own[:] = [v for v in own if not any(v is t for t in self.variables)]
        for restore in reversed(undo):
            restore()

    def _hide_from_saving(self, optimizer, own):
        from keras_bn.callbacks._patch import set_on_instance

        mine = self.variables
        undos = []
        for name in ("save_own_variables", "load_own_variables"):
            def without_taps(store, _method=getattr(optimizer, name)):
                kept = own[:]
                own[:] = [v for v in kept if not any(v is t for t in mine)]
                try:
                    return _method(store)
                finally:
                    own[:] = kept

            undos.append(set_on_instance(optimizer, name, without_taps))

        def restore():
            for undo in reversed(undos):
                undo()

        return restore

    def state_positions(self, optimizer) -> list[int]:
        """Where this tap's variables sit in ``optimizer.variables`` (JAX, while attached)."""
        positions = []
        for i, v in enumerate(optimizer.variables):
            if any(v is t for t in self.variables):
                positions.append(i)
        return positions


def _unique(objects):
    seen, out = set(), []
    for o in objects:
        if o is not None and id(o) not in seen:
            seen.add(id(o))
            out.append(o)
    return out
