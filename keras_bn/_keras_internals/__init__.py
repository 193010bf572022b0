"""The one package that touches private Keras / TensorFlow / TensorBoard names: this module,
``_tensorboard.py`` beside it for TensorBoard's protos and summary plugins, ``_trainer.py`` for
Keras' trainers (their train functions and state).

Every other module of keras-bn uses public APIs only (tests/test_keras_internals.py greps for
it). Each private name used here is listed in `REQUIRED`, and the test
``test_every_private_name_exists`` checks that each exists in the installed versions, so a new
Keras that moves one fails there, loudly, with the list, instead of deep inside a training run.

Sections (one per owner of the private access): functional graph walking, optimizer and
gradient aggregation, distribution, TensorBoard protos.

Usage (inside keras-bn only)::

    from keras_bn import _keras_internals as internals
    for node in internals.functional_nodes(model): ...
"""

from __future__ import annotations

import threading

# (importable module path, attribute path inside it) for every private name this module uses.
# Sections append their own entries next to their functions.
REQUIRED: list[tuple[str, str]] = []


# (kind of object, attribute) for private attributes set on instances, not classes; the kinds are
# made by `_instance_of` (a small compiled Functional model, its Adam optimizer).
REQUIRED_ON_INSTANCES: list[tuple[str, str]] = []


def require(module: str, attribute: str) -> None:
    """Record that this module relies on ``module.attribute`` (checked by the existence test)."""
    REQUIRED.append((module, attribute))


def require_on_instance(kind: str, attribute: str) -> None:
    """Record that this module relies on `attribute` of every `kind` ("model", "optimizer")."""
    REQUIRED_ON_INSTANCES.append((kind, attribute))


def _instance_of(kind: str):
    import keras

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return {"model": model, "optimizer": model.optimizer}[kind]


def missing_names() -> list[str]:
    """Every entry of `REQUIRED` that the installed versions lack, as ``module:attribute``."""
    import importlib

    missing = []
    for module_name, attribute in REQUIRED:
        try:
            value = importlib.import_module(module_name)
        except ImportError:
            missing.append(f"{module_name}:{attribute} (module not importable)")
            continue
        for part in attribute.split("."):
            if not hasattr(value, part):
                missing.append(f"{module_name}:{attribute}")
                break
            value = getattr(value, part)
    instances: dict = {}
    for kind, attribute in REQUIRED_ON_INSTANCES:
        if kind not in instances:
            instances[kind] = _instance_of(kind)
        if not hasattr(instances[kind], attribute):
            missing.append(f"<{kind} instance>.{attribute}")
    return missing


# --- optimizer and gradient aggregation (owner: keras_bn.callbacks._taps, keras_bn.distribute) ---
# Keras' TensorFlow optimizer clips each replica's share in ``apply`` (``_clip_gradients``), then
# sums the shares in ``_backend_update_step -> _all_reduce_sum_gradients``; the summed gradient
# exists only there.
require("keras.src.optimizers.base_optimizer", "BaseOptimizer._clip_gradients")
require("keras.src.backend.tensorflow.optimizer", "TFOptimizer._all_reduce_sum_gradients")
require_on_instance("optimizer", "_distribution_strategy")


def optimizer_variables_default(optimizer) -> list:
    """The variables ``optimizer.apply(grads)`` updates when called without them."""
    return list(optimizer._trainable_variables)


require_on_instance("optimizer", "_trainable_variables")


def optimizer_strategy_object(optimizer):
    """The tf.distribute strategy `optimizer` was created under (TF's default one included)."""
    return getattr(optimizer, "_distribution_strategy", None)


def has_aggregation_point(optimizer) -> bool:
    """Whether this Keras' optimizer has the private methods around the cross-replica sum."""
    cls = type(optimizer)
    return callable(getattr(cls, "_all_reduce_sum_gradients", None)) and callable(getattr(cls, "_clip_gradients", None))


def wrap_aggregation(optimizer, after_sum, clip_after_sum: bool):
    """Wrap ``_all_reduce_sum_gradients`` on the `optimizer` instance so that ``after_sum(grads,
    variables)`` sees the summed gradients (and, with `clip_after_sum`, Keras' clipping moves from
    each replica's share to the sum). Returns a function that undoes exactly this wrap."""
    cls = type(optimizer)
    original_reduce = cls._all_reduce_sum_gradients.__get__(optimizer)
    original_clip = cls._clip_gradients.__get__(optimizer)
    had = {name: optimizer.__dict__[name] for name in ("_clip_gradients", "_all_reduce_sum_gradients")
           if name in optimizer.__dict__}

    def _all_reduce_sum_gradients(grads_and_vars):
        reduced = list(original_reduce(grads_and_vars))
        grads = [g for g, _ in reduced]
        variables = [v for _, v in reduced]
        after_sum(grads, variables)
        if clip_after_sum:
            present = [i for i, g in enumerate(grads) if g is not None]
            clipped = original_clip([grads[i] for i in present]) if present else []
            for i, g in zip(present, clipped):
                grads[i] = g
        return list(zip(grads, variables))

    optimizer._all_reduce_sum_gradients = _all_reduce_sum_gradients
    if clip_after_sum:
        optimizer._clip_gradients = lambda grads: grads  # clipped after the sum instead

    def undo():
        for name in ("_clip_gradients", "_all_reduce_sum_gradients"):
            optimizer.__dict__.pop(name, None)
            if name in had:
                optimizer.__dict__[name] = had[name]

    return undo


# --- tf.distribute (owner: keras_bn.distribute) ---
require("tensorflow.python.distribute.distribute_lib", "_DefaultDistributionStrategy")


def is_default_strategy(strategy) -> bool:
    """True for TensorFlow's default (no-op) strategy, which every TF program runs under."""
    return type(strategy).__name__ == "_DefaultDistributionStrategy"


require("keras.src.backend.tensorflow.trainer", "TensorFlowTrainer._maybe_symbolic_build")
require("keras.src.backend.tensorflow.trainer", "TensorFlowTrainer._symbolic_build")
require_on_instance("model", "_distribute_strategy")
require("keras.src.backend.tensorflow.trainer", "reduce_per_replica")
require("keras.src.backend.tensorflow.trainer", "_collective_all_reduce_multi_worker")


def tensorflow_trainer_module():
    """Keras' TensorFlow trainer module (for the multi-worker compatibility wrappers), or None."""
    try:
        from keras.src.backend.tensorflow import trainer
    except ImportError:
        return None
    return trainer


# --- multi-worker fit compatibility (owner: keras_bn.distribute; keras#20585, tensorflow#72388) ---
_COMPAT_LOCK = threading.Lock()
_COMPAT_APPLIED = False
_COMPAT_USED: set[str] = set()


def multiworker_compat_used() -> set[str]:
    """Which compatibility fallbacks have run in this process: "symbolic_build" (keras#20585),
    "reduce_scalar" (tensorflow#72388). Empty when Keras' own code worked."""
    return set(_COMPAT_USED)


def _local_first(strategy, batch):
    import keras
    import tensorflow as tf

    def first(x):
        if isinstance(x, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(x)[0]
        return x

    return keras.tree.map_structure(first, batch)


def apply_multiworker_compat() -> bool:
    """Wrap Keras' ``_maybe_symbolic_build`` and ``reduce_per_replica`` (once per process) so
    multi-worker ``fit`` works; returns whether the wrappers are in place (False when this
    Keras lacks the functions, i.e. its code changed and the fix does not apply)."""
    global _COMPAT_APPLIED
    with _COMPAT_LOCK:
        if _COMPAT_APPLIED:
            return True
        tf_trainer = tensorflow_trainer_module()
        if tf_trainer is None:
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
            import keras

            def reduce_one(value):
                try:
                    return original_reduce(value, strategy, reduction)
                except ValueError as error:
                    if "reduction dimension" not in str(error):
                        raise
                _COMPAT_USED.add("reduce_scalar")
                return strategy.reduce("MEAN", value, axis=None)

            return keras.tree.map_structure(reduce_one, values)

        _maybe_symbolic_build._keras_bn_original = original_build
        reduce_per_replica._keras_bn_original = original_reduce
        trainer_cls._maybe_symbolic_build = _maybe_symbolic_build
        tf_trainer.reduce_per_replica = reduce_per_replica
        _COMPAT_APPLIED = True
        return True
# --- functional graph walking and sublayers (tools: folding, bn_stats) ---
# Keras 3 has no public API for a Functional model's nodes or a layer's direct sublayers.
# `Node.operation`, `Node.outputs`, `Node.arguments` and `Function._nodes_by_depth` are instance
# attributes (set in __init__), so only their classes can be checked here; the functions below
# fail with a clear error if one of them is gone.

require("keras.src.models.functional", "Functional")
require("keras.src.ops.function", "Function")
require("keras.src.ops.node", "Node.input_tensors")
require("keras.src.ops.node", "KerasHistory.operation")
require("keras.src.layers.layer", "Layer._flatten_layers")


def _instance_attribute(obj, name: str):
    try:
        return getattr(obj, name)
    except AttributeError:
        import keras

        raise RuntimeError(f"keras-bn relies on the private Keras attribute {type(obj).__name__}.{name}, which "
                           f"Keras {keras.__version__} no longer has: please report it.") from None


def is_functional(model) -> bool:
    """True for a Functional model (``keras.Model(inputs, outputs)``), not a Sequential or subclass."""
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def functional_nodes(model) -> list:
    """The call nodes of a Functional `model`, inputs first (input placeholders left out)."""
    by_depth = _instance_attribute(model, "_nodes_by_depth")
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]
            if _instance_attribute(node, "operation") is not None and not node.is_input]


def node_operation(node):
    """The layer (or operation) a node calls."""
    return _instance_attribute(node, "operation")


def node_input_tensors(node) -> list:
    """The symbolic tensors a node was called on."""
    return list(node.input_tensors)


def node_outputs(node) -> list:
    """The symbolic tensors a node produced."""
    return list(_instance_attribute(node, "outputs"))


def node_call_kwargs(node) -> dict:
    """The keyword arguments of a node's call (e.g. ``training=True``)."""
    return dict(_instance_attribute(node, "arguments").kwargs)


def producing_operation(tensor):
    """The layer that produced a symbolic tensor (an InputLayer for a model input), or None."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def direct_sublayers(layer) -> list:
    """The layers `layer` tracks directly (a Model's layers, a composite layer's parts)."""
    return list(layer._flatten_layers(include_self=False, recursive=False))
# --- recurrent cells (owner: recurrent) ---
# keras.layers.RNN prepares one dropout mask per sequence (before its loop, outside any
# tf.while_loop) only for cells that are instances of this mixin; Keras 3 does not export it.
require("keras.src.layers.rnn.dropout_rnn_cell", "DropoutRNNCell")


def dropout_rnn_cell_base() -> type:
    """Keras' ``DropoutRNNCell`` mixin (``get_dropout_mask`` / ``get_recurrent_dropout_mask``)."""
    from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

    return DropoutRNNCell


# keras_bn.LayerNormLSTM & co. run their cell's recurrent half over pre-projected inputs with the
# same time loop keras.layers.RNN uses (masking, go_backwards, unroll); Keras 3 does not export it.
require("keras.src.backend", "rnn")


def backend_rnn(step, inputs, initial_states, **kwargs):
    """Keras' backend time loop, ``keras.src.backend.rnn`` (the one ``RNN.inner_loop`` calls)."""
    from keras.src import backend

    return backend.rnn(step, inputs, initial_states, **kwargs)


# --- optimizer-state taps on JAX (owner: keras_bn.callbacks._tap_state) ---
# ``optimizer.variables`` is a copy of the private ``_variables`` list (a LossScaleOptimizer's
# adds its inner optimizer's); JAX's ``stateless_apply`` maps exactly those variables, so a tap
# whose variables are in that list gets their new values back from every jitted step.
require_on_instance("optimizer", "_variables")


def optimizer_variable_list(optimizer) -> list:
    """The (mutable) list behind ``optimizer.variables``: the optimizer's own variables."""
    own = _instance_attribute(optimizer, "_variables")
    if not isinstance(own, list):
        raise RuntimeError(f"keras-bn expected {type(optimizer).__name__}._variables to be a list; "
                           f"got {type(own).__name__}: please report it.")
    return own


# --- TensorBoard's protos and summary plugins: in ``_tensorboard.py`` (same rules, same registry) ---
from keras_bn._keras_internals._tensorboard import (  # noqa: E402  (after `require` is defined)
    tensorboard_event_class,
    tensorboard_float_tensor,
    tensorboard_hparams_api,
    tensorboard_layout_pb2,
    tensorboard_layout_summary,
    tensorboard_plugin_metadata,
    tensorboard_scalar_summary,
    tensorboard_summary_class,
    tensorboard_tensor_proto,
    tensorboard_text_summary,
)


# --- the trainers' train functions and state: in ``_trainer.py`` (same rules, same registry) ---
from keras_bn._keras_internals._trainer import (  # noqa: E402  (after `require` is defined)
    build_for_fit,
    build_from_dataset_spec,
    made_by_make_train_function,
    train_function_logs,
    unsynced_jax_state,
)
