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


# --- TensorBoard event files (events) ---
# TensorBoard's generated protos and plugin-metadata helpers: TensorFlow-free, but under
# tensorboard.compat / tensorboard.plugins, which TensorBoard does not document as an API.
require("tensorboard.compat.proto.event_pb2", "Event")
require("tensorboard.compat.proto.summary_pb2", "Summary")
require("tensorboard.util.tensor_util", "make_tensor_proto")
require("tensorboard.plugins.custom_scalar.layout_pb2", "Layout")
require("tensorboard.plugins.custom_scalar.metadata", "create_summary_metadata")
require("tensorboard.plugins.custom_scalar.metadata", "CONFIG_SUMMARY_TAG")
require("tensorboard.plugins.scalar.metadata", "create_summary_metadata")
require("tensorboard.plugins.histogram.metadata", "create_summary_metadata")
require("tensorboard.plugins.image.metadata", "create_summary_metadata")


def tensorboard_event_class():
    """TensorBoard's ``Event`` proto class (``tensorboard.compat.proto.event_pb2.Event``)."""
    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event


def tensorboard_summary_class():
    """TensorBoard's ``Summary`` proto class."""
    from tensorboard.compat.proto import summary_pb2

    return summary_pb2.Summary


def tensorboard_tensor_proto(array):
    """A TensorBoard ``TensorProto`` of a NumPy array (``tensor_util.make_tensor_proto``)."""
    from tensorboard.util import tensor_util

    return tensor_util.make_tensor_proto(array)


def tensorboard_plugin_metadata(kind: str):
    """The ``SummaryMetadata`` TensorBoard reads a tag's kind from ("scalar", "histogram", "image")."""
    from tensorboard.plugins.histogram import metadata as histogram
    from tensorboard.plugins.image import metadata as image
    from tensorboard.plugins.scalar import metadata as scalar

    plugin = {"scalar": scalar, "histogram": histogram, "image": image}[kind]
    return plugin.create_summary_metadata(display_name="", description="")


def tensorboard_layout_pb2():
    """The custom-scalars plugin's ``layout_pb2`` module (Layout, Category, Chart, ...)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    return layout_pb2


def tensorboard_layout_summary(layout):
    """The ``Summary`` proto that carries a custom-scalars `layout` (what the plugin's
    ``summary.pb`` builds, without the TensorFlow import it makes)."""
    import numpy as np
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.custom_scalar import metadata
    from tensorboard.util import tensor_util

    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.CONFIG_SUMMARY_TAG, metadata=metadata.create_summary_metadata(),
                      tensor=tensor_util.make_tensor_proto(np.array(layout.SerializeToString(), dtype=object)))
    return summary
