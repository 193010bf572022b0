"""What one `RunWriters.writing` block collects (`_Write`) and how it becomes TensorBoard's
protos in one event file (`_EventFile`, on `keras_bn.events.EventFileWriter`; no TensorFlow).

Usage (inside keras_bn.callbacks._writer)::

    write = _Write(step); write.scalar("grad_norm/dense", 0.1)
    _EventFile(run_dir).write_values(summary_values(write), write.step)
"""

from __future__ import annotations


import numpy as np

from keras_bn import _keras_internals as internals
from keras_bn.events import EventFileWriter

__all__ = ["_EventFile", "_Write", "summary_values"]


class _Write:
    """The summary calls available inside `RunWriters.writing`; what they collect is written
    as one event at the end of the ``with`` block."""

    def __init__(self, step: int):
        self.step = int(step)
        self.scalar_values: dict[str, float] = {}
        self.histogram_values: dict[str, np.ndarray] = {}
        self.images: dict[str, np.ndarray] = {}

    def scalar(self, tag: str, value) -> None:
        """Write one scalar; NaN and Inf are written as they are (TensorBoard shows them)."""
        self.scalar_values[tag] = float(value)

    def scalars(self, values: dict) -> None:
        """Write each ``tag: value`` of `values` as a scalar."""
        for tag, value in values.items():
            self.scalar(tag, value)

    def histogram_buckets(self, tag: str, edges, counts) -> None:
        """Write a histogram from bucket `edges` (k+1 values) and `counts` (k values)."""
        edges = np.asarray(edges, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        self.histogram_values[tag] = np.stack([edges[:-1], edges[1:], counts], axis=1)

    def image(self, tag: str, image) -> None:
        """Write one ``[height, width, 4]`` uint8 image, or an encoded one
        (`keras_bn.callbacks._figure_process.PNG`)."""
        self.images[tag] = image


class _EventFile:
    """One event file of TensorBoard's own protobufs, framed by `keras_bn.events.EventFileWriter`
    (no TensorFlow needed, no TensorFlow op per summary: an eager ``tf.summary`` call costs about
    as much as a training step of a small MLP). Nothing touches the disk before the first flush.
    Summary metadata goes with the first value of each tag, as ``tf.summary`` does."""

    def __init__(self, run_dir: str):
        self._writer = EventFileWriter(run_dir)

    @property
    def path(self) -> str:
        return self._writer.path

    @property
    def dropped(self) -> int:
        return self._writer.dropped

    @property
    def pending_bytes(self) -> int:
        return self._writer.pending_bytes

    def write_values(self, values: list, step: int) -> None:
        """Write ``[(tag, kind, float or TensorProto), ...]`` (`summary_values`) as one event at
        `step` (`EventFileWriter.add_values`)."""
        if values:
            self._writer.add_values(step, values)

    def write_summary(self, summary, step: int) -> None:
        """Write a ready-made ``Summary`` proto (e.g. the custom-scalars layout; TensorFlow's
        or TensorBoard's class)."""
        self._writer.add_summary(step, summary)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def summary_values(write: _Write) -> list:
    """``[(tag, kind, payload), ...]`` of everything `write` collected (a scalar's payload is its
    float, the others' a TensorProto): the costly part of a write (PNG encoding), done before
    the writers' lock is taken."""
    values = [(tag, "scalar", value) for tag, value in write.scalar_values.items()]
    values += [(tag, "histogram", internals.tensorboard_tensor_proto(buckets))
               for tag, buckets in write.histogram_values.items()]
    values += [(tag, "image", internals.tensorboard_tensor_proto(_png_tensor(rgba)))
               for tag, rgba in write.images.items()]
    return values


def _png_tensor(image) -> np.ndarray:
    """``[width, height, png]`` as bytes: the image plugin's tensor for one image (an RGBA
    array, encoded here, or a `keras_bn.callbacks._figure_process.PNG`)."""
    from keras_bn.callbacks._figure_process import PNG, encode_png

    png = image if isinstance(image, PNG) else encode_png(image)
    return np.array([str(png.width).encode(), str(png.height).encode(), png.data], dtype=object)
