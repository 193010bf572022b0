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


# --- recurrent cells (owner: recurrent) ---
# keras.layers.RNN prepares one dropout mask per sequence (before its loop, outside any
# tf.while_loop) only for cells that are instances of this mixin; Keras 3 does not export it.
require("keras.src.layers.rnn.dropout_rnn_cell", "DropoutRNNCell")


def dropout_rnn_cell_base() -> type:
    """Keras' ``DropoutRNNCell`` mixin (``get_dropout_mask`` / ``get_recurrent_dropout_mask``)."""
    from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

    return DropoutRNNCell
