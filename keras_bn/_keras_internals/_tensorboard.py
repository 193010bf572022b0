"""TensorBoard's protos, plugin metadata and summary helpers (TensorFlow-free), for keras-bn's
event writers, the doctor's own run and the HParams dashboard. Part of `keras_bn._keras_internals`:
each name is registered with its `require`, and callers import it from there.
"""

from __future__ import annotations

from keras_bn._keras_internals import require

# --- TensorBoard event files (events) ---
# TensorBoard's generated protos and plugin-metadata helpers: TensorFlow-free, but under
# tensorboard.compat / tensorboard.plugins, which TensorBoard does not document as an API.
require("tensorboard.compat.proto.event_pb2", "Event")
require("tensorboard.compat.proto.summary_pb2", "Summary")
require("tensorboard.util.tensor_util", "make_tensor_proto")
require("tensorboard.compat.proto.tensor_pb2", "TensorProto")
require("tensorboard.compat.proto.tensor_shape_pb2", "TensorShapeProto")
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


def tensorboard_float_tensor(value: float, into=None):
    """The float32 scalar ``TensorProto`` that ``make_tensor_proto(np.float32(value))`` makes,
    built directly (make_tensor_proto costs ~20x more; a write holds hundreds of scalars).
    With `into` (an empty ``TensorProto`` field of a message, e.g. ``summary_value.tensor``) it
    is filled in place and returned: no proto to copy in."""
    import numpy as np
    from tensorboard.compat.proto import tensor_pb2

    tensor = tensor_pb2.TensorProto() if into is None else into
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.SetInParent()  # a scalar: the shape is present and empty
    tensor.float_val.append(float(np.float32(value)))
    return tensor


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
# --- the doctor's own run: scalar and text summaries (owner: keras_bn.callbacks.doctor) ---
require("tensorboard.plugins.scalar.summary_v2", "scalar_pb")
require("tensorboard.plugins.text.summary_v2", "text_pb")


def tensorboard_scalar_summary(tag: str, value: float):
    """A ``Summary`` of one scalar, as ``tf.summary.scalar`` writes it (TensorFlow-free)."""
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb

    return scalar_pb(tag, float(value))


def tensorboard_text_summary(tag: str, text: str):
    """A ``Summary`` for TensorBoard's Text dashboard (TensorFlow-free)."""
    from tensorboard.plugins.text.summary_v2 import text_pb

    return text_pb(tag, text)


# --- HParams summaries (owner: writers: keras_bn.search) ---
# The module that ``tensorboard.plugins.hparams.api`` (the documented API) re-exports; `api`
# itself imports TensorFlow (for its Keras callback), this module does not.
require("tensorboard.plugins.hparams.summary_v2", "hparams_pb")
require("tensorboard.plugins.hparams.summary_v2", "hparams_config_pb")
require("tensorboard.plugins.hparams.summary_v2", "HParam")
require("tensorboard.plugins.hparams.summary_v2", "Metric")
require("tensorboard.plugins.hparams.summary_v2", "RealInterval")
require("tensorboard.plugins.hparams.summary_v2", "Discrete")


def tensorboard_hparams_api():
    """The HParams plugin's ``hp`` API (``HParam``, ``Metric``, ``RealInterval``, ``Discrete``,
    ``hparams_pb``, ``hparams_config_pb``) without the TensorFlow import of ``hparams.api``."""
    from tensorboard.plugins.hparams import summary_v2

    return summary_v2
