"""What keras-bn knows of Keras' trainers: which train function ``make_train_function`` made,
what a train function returns, the JAX trainer's unsynced state, building before the first
traced step. Part of `keras_bn._keras_internals`: each private name is registered with its
`require`, and callers import them from there.
"""

from __future__ import annotations

from keras_bn._keras_internals import require


# --- whose train function it is (owner: keras_bn.callbacks._taps) ---
# Keras' trainers make ``model.train_function`` as a local function of ``_make_function``
# (JAX, TensorFlow) or of ``make_train_function`` (PyTorch), and a model subclass that
# overrides ``make_train_function`` makes its own there too; a function the user assigned to
# ``model.train_function`` is made anywhere else. The code object's qualified name says where
# (``functools.wraps`` copies a function's ``__qualname__``, not its code's).
_MADE_IN = ("._make_function.<locals>.", "make_train_function.<locals>.")


def made_by_make_train_function(function) -> bool:
    """Whether `function` (a model's ``train_function``) is one ``make_train_function`` makes,
    so that ``model.make_train_function(force=True)`` makes its equivalent again."""
    for attribute in ("python_function", "_torchdynamo_orig_callable"):  # tf.function, torch.compile
        function = getattr(function, attribute, function)
    code = getattr(function, "__code__", None)
    if code is None:
        return False
    name = getattr(code, "co_qualname", None) or getattr(function, "__qualname__", "")  # Python 3.10: no co_qualname
    return any(part in name for part in _MADE_IN)


# --- what a train function returns (owner: keras_bn.callbacks._taps) ---
# Keras' JAX trainer calls ``logs, state = self.train_function(state, data)``; the TensorFlow
# and PyTorch trainers ``logs = self.train_function(data)``. Those logs (the metrics' results
# after the step, or what a custom ``train_step`` returns) are what ``fit`` passes to
# ``on_train_batch_end``, before ``pythonify_logs``.
def train_function_logs(result):
    """The logs dict in a train function's return value `result`, or None if it holds none."""
    if isinstance(result, dict):
        return result
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], dict):
        return result[0]
    return None


# --- the JAX trainer's training state (owner: keras_bn.callbacks._tap_state) ---
# Inside an epoch Keras' JAX ``fit`` keeps the last step's state in ``_jax_state`` (lists in the
# order of the model's variable lists) until a ``jax_state_sync`` assigns every variable. Both
# attributes exist during a fit only, so they are not in `REQUIRED`: without them readers sync
# (tests/test_backend_jax_taps.py checks that a preset's reads sync nothing).
def unsynced_jax_state(model, kind: str, count: int):
    """JAX inside an epoch: the latest step's `count` values of `kind` (e.g. ``"optimizer_variables"``)
    without the state sync; None when the variables hold the state (or it has not `count`)."""
    state = None if getattr(model, "_jax_state_synced", True) else getattr(model, "_jax_state", None)
    values = state.get(kind) if isinstance(state, dict) else None
    return values if values is not None and len(values) == count else None


# --- build before the first traced step (owners: keras_bn.recipes._common, keras_bn.callbacks._taps) ---
require("keras.src.trainers.trainer", "Trainer._symbolic_build")


def build_for_fit(model, x, y) -> None:
    """Create every variable a compiled `model`'s first ``fit`` step would (its layers, the
    compiled metrics and loss trackers, the optimizer's slots) from one batch `x`, `y`, as Keras
    does itself under a distribution strategy. Without a strategy Keras creates them inside the
    first traced train step, and TensorFlow then traces that step twice (about 1-2 s of CPU per
    model on 2 cores); the values are the same either way (zeros, or the layers' initializers)."""
    model._symbolic_build(data_batch=(x, y, None))


def build_from_dataset_spec(model, iterator) -> bool:
    """`build_for_fit` from the ``element_spec`` of the tf.data iterator a TensorFlow train
    function is called with (symbolic tensors of its shapes and dtypes: the same static shapes
    the first trace sees). Returns False, building nothing, for anything but dense tensors."""
    import keras
    import tensorflow as tf

    spec = getattr(iterator, "element_spec", None)
    leaves = tf.nest.flatten(spec) if spec is not None else []
    if not leaves or not all(type(leaf) is tf.TensorSpec for leaf in leaves):
        return False
    batch = tf.nest.map_structure(lambda leaf: keras.KerasTensor(leaf.shape, keras.backend.standardize_dtype(leaf.dtype)), spec)
    model._symbolic_build(data_batch=tuple(batch) if isinstance(batch, (tuple, list)) else (batch,))
    return True
