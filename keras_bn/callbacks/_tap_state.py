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
    sums, = state.read(sumsq)                     # JAX inside an epoch: no state sync
"""

from __future__ import annotations

import functools
import weakref

import keras
import numpy as np

from keras_bn import _keras_internals as internals
from keras_bn import distribute as kb_distribute

__all__ = ["TapState", "current_values", "is_jax", "is_tensorflow", "with_pending_state"]


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
        self._model = None  # JAX, while attached: the model whose trainer state holds them
        self._positions = None  # JAX: id(variable) -> position in the optimizer's values
        self._optimizer_count = 0
        self._pending: dict = {}  # JAX: position -> value the next step's state gets

    # --- making variables ----------------------------------------------------------------
    def floats(self, name: str, shape):
        """A float32 variable of zeros."""
        return self._make(name, np.zeros(shape, np.float32))

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
    def read(self, *variables) -> list:
        """NumPy values of these tap variables after the latest step. JAX inside an epoch: taken
        from the trainer's state at their positions, without the full state sync (a value `set`
        since that step is the one the next step gets)."""
        live = self._live_positions(variables)
        if live is None:
            self._sync()
            return [self.numpy(v) for v in variables]
        values, positions = live
        # np.asarray per array: `jax.device_get` costs more Python than the copies themselves.
        return [np.asarray(self._pending.get(p, values[p])) for p in positions]

    def take(self, variable, zero_at) -> np.ndarray:
        """The NumPy value of `variable` after the latest step (as `read`), with its entries at
        the indices `zero_at` set to 0 for the next step (an accumulator's reset after its read).
        JAX inside an epoch: the reset is computed on the device from the current value (one
        jitted call, placement kept), so no host value is sent back."""
        live = self._live_positions([variable])
        if live is None:
            self._sync()
            value = self.numpy(variable)
            if np.any(value[list(zero_at)] != 0):
                reset = value.copy()
                reset[list(zero_at)] = 0
                self.reset(variable, reset)
            return value
        values, (position,) = live
        current = self._pending.get(position, values[position])
        self._pending[position] = _zeroed(tuple(zero_at))(current)
        return np.asarray(current)

    def set(self, variable, value) -> None:
        """Set a tap variable from the host (an accumulator after its read). JAX inside an
        epoch: the next step gets the value in its state (`with_pending`), nothing syncs."""
        live = self._live_positions([variable])
        if live is None:
            self._sync()
            self.reset(variable, value)
            return
        values, (position,) = live
        self._pending[position] = _jax_like()(values[position], np.asarray(value, dtype=values[position].dtype))

    def with_pending(self, optimizer_values: list) -> list:
        """JAX: the next step's optimizer values with the values `set` left pending."""
        if not self._pending:
            return optimizer_values
        optimizer_values = list(optimizer_values)
        for position, value in self._pending.items():
            optimizer_values[position] = value
        self._pending = {}
        return optimizer_values

    def _live_positions(self, variables):
        """(the unsynced optimizer values, the positions of `variables` in them), or None."""
        model = self._model() if self._model is not None else None
        optimizer = getattr(model, "optimizer", None) if model is not None else None
        if not self.attached or optimizer is None:
            return None
        count = len(optimizer.variables)
        if self._positions is None or self._optimizer_count != count:  # another tap attached since
            self._positions, self._optimizer_count = self.state_positions(optimizer), count
        values = internals.unsynced_jax_state(model, "optimizer_variables", self._optimizer_count)
        if values is None:
            return None
        return values, [self._positions[id(v)] for v in variables]

    def _sync(self) -> None:
        _sync_jax_state(self._model() if self._model is not None else None)

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
            variable.assign(_jax_like()(variable.value, np.asarray(value, dtype=cls.numpy(variable).dtype)))
        else:
            variable.assign(np.asarray(value, dtype=cls.numpy(variable).dtype))

    # --- JAX: the variables as optimizer state ---------------------------------------------
    @property
    def attached(self) -> bool:
        return self._attached is not None

    def attach(self, host_optimizer, savers, model=None) -> None:
        """JAX only: make the variables part of `host_optimizer`'s state (its ``variables``),
        hidden from the ``save_own_variables`` / ``load_own_variables`` of every optimizer in
        `savers` (the model's optimizer and its inner ones). No-op elsewhere or if attached.
        With `model` (whose optimizer's state they join), `read` and `set` use the trainer's
        unsynced state inside an epoch."""
        if not is_jax() or self._attached is not None or not self.variables:
            return
        self._model = weakref.ref(model) if model is not None else None
        self._positions, self._pending = None, {}
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
        self._model, self._positions, self._pending = None, None, {}
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

    def state_positions(self, optimizer) -> dict:
        """Where this tap's variables sit in ``optimizer.variables`` (JAX, while attached):
        ``{id(variable): position}``."""
        return {id(v): i for i, v in enumerate(optimizer.variables) if any(v is t for t in self.variables)}


@functools.cache
def _jax_like():
    """JAX: ``like * 0 + value`` in one jitted call, so that the new value keeps the placement
    of `like` (a value made from host data would be a different jit argument of the step)."""
    import jax

    return jax.jit(lambda like, value: like * 0 + value)


@functools.cache
def _zeroed(indices: tuple):
    """JAX: ``value`` with the entries at `indices` set to 0, jitted (the output keeps the
    placement of the input, so the step's state stays the same jit argument)."""
    import jax

    return jax.jit(lambda value: value.at[np.asarray(indices)].set(0))


def current_values(model, kind: str, variables) -> list:
    """The values of `variables` (the model's whole `kind` list in order: ``"trainable_variables"``,
    ``"metrics_variables"``) after the latest step: on JAX inside an epoch from the trainer's
    unsynced state, so nothing syncs; else the variables' own."""
    if is_jax():
        values = internals.unsynced_jax_state(model, kind, len(variables))
        if values is not None:
            return list(values)
        _sync_jax_state(model)
    return [v.value for v in variables]


def _sync_jax_state(model) -> None:
    """JAX: the variables hold the latest step's values (a no-op when they already do)."""
    if model is not None and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def with_pending_state(args, taps):
    """JAX: a train function's ``(state, data)`` arguments with the values the states of `taps`
    set from the host since the last step (`TapState.set`) in the optimizer values."""
    for tap in taps:
        if tap.state._pending:
            break
    else:  # the common case, every step: nothing to do
        return args
    if not args or len(args[0]) != 4:
        return args
    trainable, non_trainable, optimizer_values, metrics = args[0]
    for tap in taps:
        optimizer_values = tap.state.with_pending(optimizer_values)
    return ((trainable, non_trainable, optimizer_values, metrics), *args[1:])


def _unique(objects):
    seen, out = set(), []
    for o in objects:
        if o is not None and id(o) not in seen:
            seen.add(id(o))
            out.append(o)
    return out
