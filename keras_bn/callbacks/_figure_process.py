"""The figure process: TensorBoard figures drawn and PNG-encoded in a child Python process.

A figure costs about 35 ms of CPU in matplotlib and PNG encoding, all of it holding the GIL:
drawn on the writers' background thread it took that time from the training loop, from the
end of ``fit`` above all. One child process (``python -m keras_bn.callbacks._figure_process``:
NumPy and matplotlib, no Keras) is started at the first figure and draws every later one, on
the other core; the training process sends the figure's data (a few kB, pickled) and gets PNG
bytes back. The child ends when this process closes its pipe (`close`, or this process' exit,
however it ends); it ignores SIGINT, which a terminal's Ctrl-C sends to both processes.

When the child cannot start, dies or does not answer within `TIMEOUT_SECS`, the figure is drawn
in this process instead (one warning says why). ``KERAS_BN_FIGURE_PROCESS=0`` draws every
figure in this process from the start.

Usage::

    png = draw_png("layer_bar_chart", {"dense": 0.3}, ylabel="gradient L2 norm")
    png.width, png.height, len(png.data)
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time

import numpy as np

__all__ = ["PNG", "child_cpu_seconds", "close", "draw_png", "encode_png"]

TIMEOUT_SECS = 30.0  # one figure takes well under a second; a child this late is stuck
FIGURES = ("layer_bar_chart", "activation_histogram_grid", "time_gradient_chart")  # keras_bn.callbacks.figures
_HEADER = struct.Struct("<Q")  # each message: its length, then its pickle


@dataclasses.dataclass(frozen=True)
class PNG:
    """An encoded image: what TensorBoard's image plugin stores."""

    data: bytes
    width: int
    height: int


def encode_png(rgba: np.ndarray) -> PNG:
    """The PNG of a ``[height, width, 4]`` uint8 image."""
    import matplotlib.image

    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, rgba, format="png")
    height, width = rgba.shape[:2]
    return PNG(buffer.getvalue(), int(width), int(height))


def _draw_here(kind: str, args, kwargs) -> PNG:
    from keras_bn.callbacks import figures

    return encode_png(getattr(figures, kind)(*args, **kwargs))


# --- the training process' side ------------------------------------------------------------
class _Child:
    """The one figure process of this Python process; requests go one at a time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.unavailable: str | None = None  # why figures are drawn here (once set, for good)
        self.cpu_seconds = 0.0  # CPU the child spent on the figures it drew

    def draw(self, kind: str, args, kwargs) -> PNG:
        if kind not in FIGURES:
            raise ValueError(f"`kind` must be one of: {', '.join(map(repr, FIGURES))}. Received: kind={kind!r}")
        with self.lock:
            if self.unavailable is None and os.environ.get("KERAS_BN_FIGURE_PROCESS", "1") != "0":
                try:
                    return self._request(kind, args, kwargs)
                except _ChildFailed as failure:
                    self._stop(kill=True)
                    self.unavailable = str(failure)
                    from keras_bn import _warnings

                    _warnings.warn(f"keras_bn: {failure}; figures are drawn in the training process from now on.",
                                   RuntimeWarning)
        return _draw_here(kind, args, kwargs)

    def _start(self) -> subprocess.Popen:
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONSAFEPATH="1")  # the user's folder never shadows numpy or matplotlib
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            return subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True)
        except (OSError, ValueError) as error:
            raise _ChildFailed(f"the figure process could not start ({error})") from error

    def _request(self, kind, args, kwargs) -> PNG:
        if self.process is None:
            self.process = self._start()
        elif self.process.poll() is not None:
            raise _ChildFailed(f"the figure process exited with code {self.process.returncode}")
        try:
            _send(self.process.stdin, (kind, args, kwargs))
            reply = _receive(self.process.stdout, TIMEOUT_SECS)
        except Exception as error:  # noqa: BLE001  a broken pipe, a dead or stuck child, a bad reply
            code = self.process.poll()
            why = f"exited with code {code}" if code is not None else f"failed ({error!r})"
            raise _ChildFailed(f"the figure process {why}") from error
        status, value, cpu = reply
        self.cpu_seconds += cpu
        if status == "error":  # the figure's own error (bad data): raise it here, as drawing here would
            raise RuntimeError(f"drawing {kind} failed in the figure process: {value}")
        return value

    def _stop(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            process.kill()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _ChildFailed(Exception):
    pass


_CHILD = _Child()


def draw_png(kind: str, *args, **kwargs) -> PNG:
    """Figure `kind` of `keras_bn.callbacks.figures` (one of `FIGURES`, with that function's
    arguments) as a PNG, drawn in the figure process (or here, when it is unavailable)."""
    return _CHILD.draw(kind, args, kwargs)


def close() -> None:
    """Stop the figure process (the next figure starts a new one)."""
    with _CHILD.lock:
        _CHILD._stop()


def child_cpu_seconds() -> float:
    """CPU seconds the figure process spent drawing and encoding, over this process' life."""
    return _CHILD.cpu_seconds


def _send(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream, timeout: float | None = None):
    if timeout is not None and os.name == "posix":
        ready, _, _ = select.select([stream], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer within {timeout:g} s")
    header = _read_exactly(stream, _HEADER.size)
    return pickle.loads(_read_exactly(stream, _HEADER.unpack(header)[0]))


def _read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)  # a buffered read returns short only at the end of the stream
    if len(data) != size:
        raise EOFError("the figure process closed its pipe")
    return data


# --- the child's side ----------------------------------------------------------------------
def _serve(requests, replies) -> None:
    """Answer ``(kind, args, kwargs)`` requests with ``(status, PNG | message, cpu seconds)``
    until `requests` ends."""
    while True:
        try:
            kind, args, kwargs = _receive(requests)
        except EOFError:
            return
        started = time.process_time()
        try:
            reply = ("ok", _draw_here(kind, args, kwargs))
        except Exception as error:  # noqa: BLE001  a figure's bad data must not end the process
            reply = ("error", f"{type(error).__name__}: {error}")
        _send(replies, reply + (time.process_time() - started,))


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the training process
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print (a library's) goes where stderr goes, never into the replies
    from keras_bn.callbacks._figure_process import _serve as serve  # PNG pickles under its module's name

    serve(sys.stdin.buffer, replies)
