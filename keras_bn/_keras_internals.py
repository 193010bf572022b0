"""The one module that touches private Keras / TensorFlow / TensorBoard names.

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

# (importable module path, attribute path inside it) for every private name this module uses.
# Sections append their own entries next to their functions.
REQUIRED: list[tuple[str, str]] = []


def require(module: str, attribute: str) -> None:
    """Record that this module relies on ``module.attribute`` (checked by the existence test)."""
    REQUIRED.append((module, attribute))


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
    return missing


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
