"""Lazy TensorBoard writers for one run directory, and the summary helpers every callback uses.

`RunWriters` keeps the layout of ``keras.callbacks.TensorBoard`` (``<log_dir>/train`` and
``<log_dir>/validation``), creates each event file only when something is written to it,
flushes after every group of writes and can be closed any number of times (a later write
opens a fresh event file in the same directory). Histograms are written from buckets that
were computed on the device, so only ``[bins, 3]`` numbers ever reach the host; non-finite
values never reach a summary.

Usage::

    writers = RunWriters("logs/run1")
    with writers.writing("train", step=100) as write:
        write.scalar("grad_norm/block1_dense", 0.12)
    writers.close()
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

RUNS = ("train", "validation")
CUSTOM_SCALARS_CATEGORY = "keras-bn diagnostics"


class _Write:
    """The summary calls available inside `RunWriters.writing`."""

    def __init__(self, step: int):
        import tensorflow as tf

        self._tf = tf
        self.step = int(step)

    def scalar(self, tag: str, value) -> None:
        """Write one scalar; NaN and Inf are written as they are (TensorBoard shows them)."""
        self._tf.summary.scalar(tag, float(value), step=self.step)

    def scalars(self, values: dict) -> None:
        """Write each ``tag: value`` of `values` as a scalar."""
        for tag, value in values.items():
            self.scalar(tag, value)

    def histogram_buckets(self, tag: str, edges, counts) -> None:
        """Write a histogram from bucket `edges` (k+1 values) and `counts` (k values)."""
        from tensorboard.plugins.histogram import metadata

        edges = np.asarray(edges, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        tensor = np.stack([edges[:-1], edges[1:], counts], axis=1) if counts.size else np.zeros((0, 3))
        self._tf.summary.write(
            tag, tensor, step=self.step,
            metadata=metadata.create_summary_metadata(display_name=tag, description=""),
        )

    def image(self, tag: str, rgba: np.ndarray) -> None:
        """Write one ``[height, width, 4]`` uint8 image."""
        self._tf.summary.image(tag, rgba[np.newaxis], step=self.step, max_outputs=1)


class RunWriters:
    """One lazily created ``tf.summary`` writer per run (train / validation) of `log_dir`."""

    def __init__(self, log_dir: str):
        self.log_dir = os.fspath(log_dir)
        self._writers: dict = {}
        self._layout_charts: dict[str, str] = {}
        self._layout_written = False
        self._lock = threading.Lock()

    def run_dir(self, run: str) -> str:
        return os.path.join(self.log_dir, run)

    def _writer(self, run: str):
        if run not in self._writers:
            import tensorflow as tf

            # Flushed explicitly after each group of writes; flush_millis is a safety net.
            self._writers[run] = tf.summary.create_file_writer(
                self.run_dir(run), max_queue=1000, flush_millis=10_000
            )
        return self._writers[run]

    @contextlib.contextmanager
    def writing(self, run: str, step: int):
        """Context in which ``write.scalar(...)`` etc. go to `run` at `step`; flushed at exit."""
        if run not in RUNS:
            raise ValueError(f"`run` must be one of: {', '.join(map(repr, RUNS))}. Received: run={run!r}")
        with self._lock:
            writer = self._writer(run)
            with writer.as_default():
                yield _Write(step)
                if run == "train" and self._layout_charts and not self._layout_written:
                    self._write_layout()
            writer.flush()

    def add_charts(self, charts: dict[str, str]) -> None:
        """Register custom-scalars charts ``{title: tag regex}``, written with the next train write."""
        new = {t: r for t, r in charts.items() if self._layout_charts.get(t) != r}
        if new:
            self._layout_charts.update(new)
            self._layout_written = False

    def _write_layout(self) -> None:
        import tensorflow as tf
        from tensorboard.plugins.custom_scalar import layout_pb2, summary as cs_summary

        charts = [
            layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
            for title, regex in self._layout_charts.items()
        ]
        layout = layout_pb2.Layout(
            category=[layout_pb2.Category(title=CUSTOM_SCALARS_CATEGORY, chart=charts)]
        )
        tf.summary.experimental.write_raw_pb(cs_summary.pb(layout).SerializeToString(), step=0)
        self._layout_written = True

    def flush(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.flush()

    def close(self) -> None:
        """Flush and close every open writer; safe to call twice, and writing later reopens."""
        with self._lock:
            writers, self._writers = self._writers, {}
            self._layout_written = False
            for writer in writers.values():
                try:
                    writer.close()
                except Exception:  # noqa: BLE001  closing must never hide the training error
                    pass

