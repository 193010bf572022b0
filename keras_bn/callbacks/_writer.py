"""Lazy TensorBoard writers for one run directory, and the summary helpers every callback uses.

`RunWriters` keeps the layout of ``keras.callbacks.TensorBoard`` (``<log_dir>/train`` and
``<log_dir>/validation``), creates each event file only when something is written to it,
puts every write on disk within `flush_secs` seconds (a timer thread flushes even when no write
follows; also on `flush`/`close`), closes whatever is still open at interpreter exit and on
SIGTERM (a handler is installed once where SIGTERM has its default action; it closes the
writers, then lets the signal end the process as before; ``KERAS_BN_NO_SIGTERM_HANDLER=1``
turns it off, `close_all_writers` is for your own handler), and can be closed any number of
times (a later write opens a fresh event file in the same directory). Slow work (drawing figures) goes to one
background thread with `submit`, so training does not wait for matplotlib; `close` waits for it. Histograms are written from buckets that
were computed on the device, so only ``[bins, 3]`` numbers ever reach the host; non-finite
values never reach a summary.

Usage::

    writers = RunWriters("logs/run1")
    with writers.writing("train", step=100) as write:
        write.scalar("grad_norm/block1_dense", 0.12)
    writers.close()
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import itertools
import os
import threading
import time
import warnings
import weakref

import numpy as np

RUNS = ("train", "validation")
CUSTOM_SCALARS_CATEGORY = "keras-bn diagnostics"
PERCENTILES_CATEGORY = "keras-bn: pre-activation percentiles (BN paper, Fig. 1)"
# Charts appear in this order (by the start of their tag regex): what diagnoses a run first.
CHART_ORDER = ("(batch|epoch)_loss", "(batch|epoch)_", "grad_norm/", "grad_global/", "update_ratio/",
               "dead_fraction/", "saturation/", "activation_std/", "activation_mean/", "zero_fraction/",
               "grad_norm_preclip/")


def _chart_rank(regex: str) -> int:
    return next((i for i, prefix in enumerate(CHART_ORDER) if regex.startswith(prefix)), len(CHART_ORDER))


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

    def image(self, tag: str, rgba: np.ndarray) -> None:
        """Write one ``[height, width, 4]`` uint8 image."""
        self.images[tag] = rgba


class _EventFile:
    """One event file of TensorBoard's own protobufs, written as TFRecords by
    ``tf.io.TFRecordWriter`` (native checksums, no TensorFlow op per summary: an eager
    ``tf.summary`` call costs about as much as a training step of a small MLP, and
    TensorBoard's pure-Python record writer spends ~0.3 us per byte on its checksum).
    Summary metadata goes with the first value of each tag, as ``tf.summary`` does."""

    _count = itertools.count()

    def __init__(self, run_dir: str):
        import socket

        import tensorflow as tf
        from tensorboard.compat.proto import event_pb2

        tf.io.gfile.makedirs(run_dir)
        name = f"events.out.tfevents.{time.time():010.0f}.{socket.gethostname()}.{os.getpid()}.{next(self._count)}.v2"
        self._writer = tf.io.TFRecordWriter(os.path.join(run_dir, name))
        self._described: set[str] = set()
        self._writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        self._writer.flush()

    def write(self, write: _Write) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.util import tensor_util

        summary = summary_pb2.Summary()
        for kind, values in (("scalar", write.scalar_values), ("histogram", write.histogram_values)):
            for tag, value in values.items():
                array = np.float32(value) if kind == "scalar" else value
                self._add(summary, tag, kind, tensor_util.make_tensor_proto(array))
        for tag, rgba in write.images.items():
            self._add(summary, tag, "image", tensor_util.make_tensor_proto(_png_tensor(rgba)))
        if summary.value:
            self._write_event(event_pb2.Event(wall_time=time.time(), step=write.step, summary=summary))

    def write_summary(self, summary, step: int) -> None:
        """Write a ready-made ``Summary`` proto (e.g. the custom-scalars layout; TensorFlow's
        or TensorBoard's class)."""
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary.FromString(summary.SerializeToString())
        self._write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _write_event(self, event) -> None:
        self._writer.write(event.SerializeToString())

    def _add(self, summary, tag: str, kind: str, tensor) -> None:
        value = summary.value.add(tag=tag, tensor=tensor)
        if tag not in self._described:
            self._described.add(tag)
            value.metadata.CopyFrom(_metadata(kind))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _metadata(kind: str):
    """The plugin metadata TensorBoard reads a tag's kind from (as ``tf.summary`` writes it)."""
    from tensorboard.plugins.histogram import metadata as histogram
    from tensorboard.plugins.image import metadata as image
    from tensorboard.plugins.scalar import metadata as scalar

    plugin = {"scalar": scalar, "histogram": histogram, "image": image}[kind]
    return plugin.create_summary_metadata(display_name="", description="")


def _png_tensor(rgba: np.ndarray) -> np.ndarray:
    """``[width, height, png]`` as bytes: the image plugin's tensor for one image."""
    import io

    import matplotlib.image

    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, rgba, format="png")
    height, width = rgba.shape[:2]
    return np.array([str(width).encode(), str(height).encode(), buffer.getvalue()], dtype=object)


def _warn_on_error(function, *args) -> None:
    try:
        function(*args)
    except Exception as error:  # noqa: BLE001  a broken figure must not stop training
        warnings.warn(f"keras_bn background task {function.__name__} failed: {error!r}", RuntimeWarning, stacklevel=1)


_OPEN_WRITERS: "weakref.WeakSet[RunWriters]" = weakref.WeakSet()


@atexit.register
def _close_open_writers(timeout: float | None = None) -> None:
    for writers in list(_OPEN_WRITERS):
        writers.close(timeout=timeout)


def close_all_writers(timeout: float | None = 5.0) -> None:
    """Flush and close every open keras-bn writer of this process (e.g. from your own signal
    handler); waits at most `timeout` seconds for figures being drawn."""
    _close_open_writers(timeout)


_SIGTERM_INSTALLED = False


def _on_sigterm(signum, frame) -> None:
    """Close every writer (so all summaries so far are on disk), then die of SIGTERM as before."""
    import signal

    try:
        _close_open_writers(timeout=2.0)
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_sigterm_handler() -> None:
    """Once per process, in the main thread, where SIGTERM still has its default action (a user
    handler is never replaced: call `close_all_writers` from it)."""
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or os.environ.get("KERAS_BN_NO_SIGTERM_HANDLER"):
        return
    import signal

    _SIGTERM_INSTALLED = True
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)


class RunWriters:
    """One lazily created event file per run (train / validation) of `log_dir`."""

    def __init__(self, log_dir: str, flush_secs: float = 5.0):
        self.log_dir = os.fspath(log_dir)
        self.flush_secs = float(flush_secs)
        self._writers: dict = {}
        self._layout_charts: dict[str, str] = {}
        self._layout_written = False
        self._lock = threading.RLock()
        self._last_flush = time.monotonic()
        self._executor = None
        self._pending: list = []
        self._flush_timer = None
        self._listeners: list = []

    def add_listener(self, listener) -> None:
        """Call ``listener(run, step, scalars)`` after every write with that write's scalars
        (``{tag: float}``); e.g. the live doctor reads the values the callbacks already read.
        A listener that raises is reported once as a RuntimeWarning and removed."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def _notify(self, run: str, write: "_Write") -> None:
        for listener in list(self._listeners):
            try:
                listener(run, write.step, dict(write.scalar_values))
            except Exception as error:  # noqa: BLE001  a broken listener must not stop training
                self._listeners.remove(listener)
                warnings.warn(f"keras_bn writer listener {listener!r} failed and was removed: {error!r}",
                              RuntimeWarning, stacklevel=2)

    @property
    def is_chief(self) -> bool:
        """False in a non-chief task of multi-worker training (TF_CONFIG): every worker computes
        the same statistics (reads stay symmetric), only the chief writes them."""
        from keras_bn.distribute import is_chief

        return is_chief()

    def run_dir(self, run: str) -> str:
        return os.path.join(self.log_dir, run)

    def _writer(self, run: str):
        if run not in self._writers:
            self._writers[run] = _EventFile(self.run_dir(run))
            _OPEN_WRITERS.add(self)
            _install_sigterm_handler()
        return self._writers[run]

    @contextlib.contextmanager
    def writing(self, run: str, step: int):
        """Context in which ``write.scalar(...)`` etc. go to `run` at `step`."""
        if run not in RUNS:
            raise ValueError(f"`run` must be one of: {', '.join(map(repr, RUNS))}. Received: run={run!r}")
        if not self.is_chief:  # the chief gate: under multi-worker training only the chief writes
            write = _Write(step)
            yield write
            self._notify(run, write)
            return
        with self._lock:
            writer = self._writer(run)
            write = _Write(step)
            yield write
            writer.write(write)
            self._notify(run, write)
            if run == "train" and self._layout_charts and not self._layout_written:
                self._write_layout(writer)
            if time.monotonic() - self._last_flush >= self.flush_secs:
                self.flush()
            elif self._flush_timer is None:  # on disk within flush_secs even if no write follows
                self._flush_timer = threading.Timer(self.flush_secs, self._timed_flush)
                self._flush_timer.daemon = True
                self._flush_timer.start()

    def _timed_flush(self) -> None:
        with self._lock:
            self._flush_timer = None
            if self._writers:
                self.flush()

    def submit(self, function, *args) -> None:
        """Run `function(*args)` on the writers' background thread (in submission order)."""
        if not self.is_chief:
            return
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keras_bn_figures")
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(self._executor.submit(_warn_on_error, function, *args))

    def add_charts(self, charts: dict[str, str]) -> None:
        """Register custom-scalars charts ``{title: tag regex}``, written with the next train write."""
        new = {t: r for t, r in charts.items() if self._layout_charts.get(t) != r}
        if new:
            self._layout_charts.update(new)
            self._layout_written = False

    def _write_layout(self, writer: _EventFile) -> None:
        from tensorboard.plugins.custom_scalar import layout_pb2, summary as cs_summary

        categories = {CUSTOM_SCALARS_CATEGORY: [], PERCENTILES_CATEGORY: []}
        for title, regex in sorted(self._layout_charts.items(), key=lambda item: _chart_rank(item[1])):
            category = PERCENTILES_CATEGORY if regex.startswith("preact/") else CUSTOM_SCALARS_CATEGORY
            categories[category].append(
                layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
            )
        layout = layout_pb2.Layout(
            category=[layout_pb2.Category(title=title, chart=charts) for title, charts in categories.items() if charts]
        )
        writer.write_summary(cs_summary.pb(layout), step=0)
        self._layout_written = True

    def flush(self) -> None:
        """Write everything queued so far to disk."""
        with self._lock:
            for writer in self._writers.values():
                writer.flush()
            self._last_flush = time.monotonic()

    def close(self, timeout: float | None = None) -> None:
        """Finish background work (waiting at most `timeout` s), flush and close every writer;
        safe to call twice."""
        pending, self._pending = self._pending, []
        concurrent.futures.wait(pending, timeout=timeout)
        with self._lock:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            if self._executor is not None:
                self._executor.shutdown(wait=timeout is None)
                self._executor = None
            writers, self._writers = self._writers, {}
            self._layout_written = False
            for writer in writers.values():
                try:
                    writer.close()
                except Exception:  # noqa: BLE001  closing must never hide the training error
                    pass

