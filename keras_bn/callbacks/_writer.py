"""Lazy TensorBoard writers for one run directory, and the summary helpers every callback uses.

`RunWriters` keeps the layout of ``keras.callbacks.TensorBoard`` (``<log_dir>/train`` and
``<log_dir>/validation``), creates each event file only when something is written to it,
puts every write on disk within `flush_secs` seconds (a timer thread flushes even when no write
follows; also on `flush`/`close`), closes whatever is still open at interpreter exit and on
SIGTERM (a handler is installed once where SIGTERM has its default action; it closes the
writers, then lets the signal end the process as before; ``KERAS_BN_NO_SIGTERM_HANDLER=1``
turns it off, `close_all_writers` is for your own handler), and can be closed any number of
times (a later write opens a fresh event file in the same directory). Slow work (drawing figures) goes to one
background thread with `submit`, so training does not wait for matplotlib; `close` waits for it,
`end_fit` (a fit's end) does not: the files close after the last figure, or at interpreter exit,
and keras-bn's readers wait for it (`keras_bn.events.finish_writes`). Histograms are written
from buckets computed on the device, so only ``[bins, 3]`` numbers ever reach the host;
non-finite values never reach a summary. Files are written by `keras_bn.events.EventFileWriter` (no
TensorFlow needed) in whole records; a failing disk stops logging with one warning, never
training, and logging resumes when the disk takes writes again. The custom-scalars dashboard
is laid out by `keras_bn.callbacks._layout`.

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
import os
import threading
import time
import weakref

from keras_bn import _keras_internals as internals
from keras_bn import _warnings
from keras_bn.callbacks._layout import LayerTags, custom_scalars_layout
from keras_bn.callbacks._runs import check_flush_secs, check_run_path, check_writable_log_dir
from keras_bn.callbacks._summaries import _EventFile, _Write, summary_values
from keras_bn.events import last_step
from keras_bn.events.records import PENDING_WRITES

__all__ = ["RUNS", "RunWriters", "close_all_writers"]

RUNS = ("train", "validation")

def _warn_on_error(function, *args) -> None:
    try:
        function(*args)
    except Exception as error:  # noqa: BLE001  a broken figure must not stop training
        _warnings.warn(f"keras_bn background task {function.__name__} failed: {error!r}", RuntimeWarning)


_OPEN_WRITERS: "weakref.WeakSet[RunWriters]" = weakref.WeakSet()
_WARNED_OFFSETS: set[tuple[str, int]] = set()  # (log_dir, step offset): one resume warning each


def _finish_background_writes(path: str | None) -> None:
    """Wait for the figures (and the close after them) of the writers under or above `path`."""
    for writers in list(_OPEN_WRITERS):
        log_dir = os.path.abspath(writers.log_dir)
        if path is None or path == log_dir or path.startswith(log_dir + os.sep) or log_dir.startswith(path + os.sep):
            concurrent.futures.wait(list(writers._pending))


PENDING_WRITES.append(_finish_background_writes)


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
    """One lazily created event file per run (train / validation) of `log_dir`.

    A disk that fails (full, quota, gone) never stops training: the first failed write, flush or
    close warns once that logging stopped and why; summaries are kept in memory (up to 64 MiB per
    run, then counted as dropped) and the next flush after a back-off (1 s, doubling to
    `MAX_BACKOFF_SECS`) tries again, so logging resumes when space returns. Files only ever hold
    whole records.
    """

    MIN_BACKOFF_SECS = 1.0
    MAX_BACKOFF_SECS = 60.0

    def __init__(self, log_dir: str, flush_secs: float = 5.0):
        self.log_dir = check_run_path(log_dir)
        self.flush_secs = check_flush_secs(flush_secs)
        self._writers: dict = {}
        self._layout_charts: dict[str, str] = {}
        self._layout_written = False
        self._layer_tags = LayerTags()
        self._written_layout: bytes | None = None  # the layout in the current train file
        self._lock = threading.RLock()
        self._last_flush = time.monotonic()
        self._executor = None
        self._pending: list = []
        self._flush_timer = None
        self._listeners: list = []
        self._failure: str | None = None  # why the disk refused the last write, while it does
        self._backoff = 0.0
        self._retry_at = 0.0
        self._dropped_reported = 0
        self._step_offset: tuple[int, int] | None = None  # (optimizer step, offset) of this fit
        self._closing = None  # the token of the close `end_fit` left to the background thread
        self._chief: bool | None = None  # `is_chief`, read once per fit
        self._checked = False  # `check_writable` passed in this fit

    def step_offset(self, optimizer_step: int) -> int:
        """What to add to `optimizer_step` so that this fit's steps follow the last step already
        in ``<log_dir>/train``: 0 unless the log holds later steps (a fit resumed without its
        optimizer, or a new optimizer, into the same log), which is warned about once. Fixed
        until `close` (the end of the fit); 0 outside the chief.

        Example: ``step = optimizer_step + writers.step_offset(optimizer_step)``
        """
        optimizer_step = int(optimizer_step)
        self._closing = None  # a fit begins: the files stay open
        if self._step_offset is None or self._step_offset[0] != optimizer_step:
            try:
                last = last_step(self.run_dir("train")) if self.is_chief else None
            except Exception:  # noqa: BLE001  an unreadable log must not stop training: no offset
                last = None
            offset = 0 if last is None or last <= optimizer_step else last - optimizer_step
            if offset and (os.path.abspath(self.log_dir), offset) not in _WARNED_OFFSETS:
                _WARNED_OFFSETS.add((os.path.abspath(self.log_dir), offset))
                _warnings.warn(f"keras_bn: {self.log_dir!r} already holds steps up to {last}, but the optimizer is at "
                     f"step {optimizer_step} (a fit resumed without its optimizer, or a new optimizer); this "
                     f"fit's summaries continue at step {last + 1} so that no step is written twice. Restore "
                     f"the optimizer with the model (model.save / keras.models.load_model) or give the run a "
                     f"log_dir of its own.", UserWarning)
            self._step_offset = (optimizer_step, offset)
        return self._step_offset[1]

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
                _warnings.warn(f"keras_bn writer listener {listener!r} failed and was removed: {error!r}",
                               RuntimeWarning)

    @property
    def is_chief(self) -> bool:
        """False in a non-chief task of multi-worker training (TF_CONFIG): every worker computes
        the same statistics (reads stay symmetric), only the chief writes them. Read once per fit."""
        if self._chief is None:
            from keras_bn.distribute import is_chief

            self._chief = is_chief()
        return self._chief

    def check_writable(self) -> None:
        """Raise ValueError when the log directory cannot be written (`check_writable_log_dir`);
        once per fit however many callbacks share these writers, and only on the chief."""
        if not self._checked and self.is_chief:
            check_writable_log_dir(self.log_dir)
            self._checked = True

    @property
    def logging_stopped(self) -> str | None:
        """Why the disk refuses writes right now (None while writing works)."""
        return self._failure

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
        write = _Write(step)
        yield write
        values = summary_values(write)  # PNG encoding outside the lock: a figure never blocks a step's write
        with self._lock:
            writer = self._writer(run)
            writer.write_values(values, write.step)  # in memory: the disk is touched by flush only
            self._notify(run, write)
            if run == "train" and self._layer_tags.add(write.scalar_values):
                self._layout_written = False  # a chart may now split its layers differently
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
        layout = custom_scalars_layout(self._layout_charts, self._layer_tags)
        if layout.SerializeToString() != self._written_layout:  # again only when a chart changed
            writer.write_summary(internals.tensorboard_layout_summary(layout), step=0)
            self._written_layout = layout.SerializeToString()
        self._layout_written = True

    def flush(self) -> None:
        """Write everything queued so far to disk (after a disk failure: at most once per back-off)."""
        with self._lock:
            self._last_flush = time.monotonic()
            if self._failure is not None and self._last_flush < self._retry_at:
                return
            self._write_out(lambda writer: writer.flush())

    def _write_out(self, action) -> None:
        """`action(writer)` for each writer; a failure stops logging (warned once), never training."""
        for writer in list(self._writers.values()):
            try:
                action(writer)
            except Exception as error:  # noqa: BLE001  a full disk must not stop training
                self._disk_failed(error)
                return
        if self._failure is not None:
            self._disk_recovered()

    def _disk_failed(self, error: Exception) -> None:
        self._backoff = min(self.MAX_BACKOFF_SECS, max(self.MIN_BACKOFF_SECS, 2 * self._backoff))
        self._retry_at = time.monotonic() + self._backoff
        if self._failure is None:
            self._failure = f"{type(error).__name__}: {error}"
            _warnings.warn(
                f"keras_bn stopped logging to {self.log_dir!r}: {self._failure}. Training goes on; "
                f"what is on disk stays readable, and writing resumes by itself when the disk accepts "
                f"writes again (summaries wait in memory, up to 64 MiB per run).",
                RuntimeWarning,
            )

    def _disk_recovered(self) -> None:
        dropped = sum(writer.dropped for writer in self._writers.values())
        lost = f"; {dropped - self._dropped_reported} summaries were dropped meanwhile" if dropped > self._dropped_reported else ""
        self._dropped_reported = dropped
        _warnings.warn(f"keras_bn resumed logging to {self.log_dir!r} (it had stopped: {self._failure}){lost}.",
                       RuntimeWarning)
        self._failure, self._backoff = None, 0.0

    def end_fit(self) -> None:
        """Close at the end of a fit without waiting for figures still being drawn: what is
        written so far is flushed now, and the files close on the background thread once the
        figures are written, or at interpreter exit (which waits for them), so ``fit`` returns
        at once and no figure is lost. The next fit's `step_offset` keeps the files open."""
        with self._lock:
            self._chief, self._checked = None, False
            self._pending = [f for f in self._pending if not f.done()]
            if not self._pending:
                self._closing = None
            else:
                self._closing = token = object()
                self._pending.append(self._executor.submit(self._close_files, token))
                self.flush()
                return
        self.close()

    def close(self, timeout: float | None = None) -> None:
        """Finish background work (waiting at most `timeout` s), flush and close every writer;
        safe to call twice, never raises for the disk."""
        pending, self._pending = self._pending, []
        concurrent.futures.wait(pending, timeout=timeout)
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=timeout is None)
                self._executor = None
            self._close_files()

    def _close_files(self, token=None) -> None:
        """Flush and close the event files (a later write opens fresh ones); with a `token`
        from `end_fit`: only if no fit began since."""
        with self._lock:
            if token is not None and self._closing is not token:
                return
            self._closing = None
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            self._write_out(lambda writer: writer.flush())  # one last try, whatever the back-off
            writers, self._writers = self._writers, {}
            unwritten = sum(writer.pending_bytes for writer in writers.values())
            if unwritten:
                _warnings.warn(f"keras_bn could not write the last {unwritten} bytes of summaries to "
                               f"{self.log_dir!r} ({self._failure}); what is on disk stays readable.",
                               RuntimeWarning)
            self._layout_written, self._written_layout = False, None
            self._step_offset, self._chief, self._checked = None, None, False
            for writer in writers.values():
                try:
                    writer.close()
                except Exception:  # noqa: BLE001  what the disk refused was warned about already
                    pass
