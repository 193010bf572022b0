"""Run directories: fail early on one that cannot be written, give concurrent runs their own.

`diagnostics(log_dir)` writes to `log_dir` exactly (a resumed script passes the same folder
again and its steps continue there). Several processes sharing one log root each take a
fresh folder with `unique_run_dir`, created atomically with ``os.mkdir`` and named after the
process id, so two runs started at the same moment never share (or overwrite) a folder.

Usage::

    run = keras_bn.callbacks.unique_run_dir("logs/sweep", name="lr0.1")  # logs/sweep/lr0.1-4242-0
    model.fit(x, y, callbacks=keras_bn.callbacks.diagnostics(run, probe=x[:256]))
"""

from __future__ import annotations

import errno
import itertools
import math
import numbers
import os
import tempfile
import time

__all__ = ["MAX_FLUSH_SECS", "check_flush_secs", "check_log_dir_now", "check_run_path", "check_writable_log_dir",
           "unique_run_dir"]

RUN_SUBDIRS = ("train", "validation")
MAX_FLUSH_SECS = 3600.0  # a summary reaches the disk at most an hour after it was written


def check_run_path(log_dir) -> str:
    """`log_dir` as a string path; raises for a non-path, an empty path or one with a NUL byte."""
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(f"`log_dir` must be a path (str or os.PathLike). Received: log_dir={log_dir!r}")
    path = os.fspath(log_dir)
    if isinstance(path, bytes):
        raise TypeError(f"`log_dir` must be a str path, not bytes. Received: log_dir={log_dir!r}")
    if not path:
        raise ValueError("`log_dir` must name a folder; an empty path would write into the current "
                         "directory's train/. Received: log_dir=''")
    if "\0" in path:
        raise ValueError(f"`log_dir` must not contain a NUL character. Received: log_dir={path!r}")
    return path


def check_flush_secs(flush_secs) -> float:
    """`flush_secs` as a float in (0, MAX_FLUSH_SECS]; raises otherwise."""
    if isinstance(flush_secs, bool) or not isinstance(flush_secs, numbers.Real) or not (
            math.isfinite(flush_secs) and 0 < flush_secs <= MAX_FLUSH_SECS):
        raise ValueError(f"`flush_secs` must be a number in (0, {MAX_FLUSH_SECS:g}] seconds. "
                         f"Received: flush_secs={flush_secs!r}")
    return float(flush_secs)


def check_log_dir_now(log_dir) -> str:
    """The checks a callback's constructor runs on `log_dir`: a real path (`check_run_path`) that
    can be written (`check_writable_log_dir`); returns it as a string. Creates nothing.

    Example::

        self.log_dir = check_log_dir_now(log_dir)  # raises ValueError for "/proc/x"
    """
    path = check_run_path(log_dir)
    check_writable_log_dir(path)
    return path


def check_writable_log_dir(log_dir: str) -> None:
    """Raise ValueError when `log_dir` (or the folder it would be created in) cannot be written.

    Leaves nothing behind: the nearest existing ancestor must be a directory in which a folder can
    be made (tried with a temporary folder, removed at once, so root on ``/proc`` or a read-only
    mount is caught too; a full disk is not refused: the writers wait for space), and neither
    `log_dir` nor its ``train``/``validation`` entries may be files.
    """
    path = os.path.abspath(check_run_path(log_dir))
    for candidate in [path] + [os.path.join(path, run) for run in RUN_SUBDIRS]:
        if os.path.exists(candidate) and not os.path.isdir(candidate):
            raise ValueError(
                f"`log_dir` cannot be written: {candidate!r} is a file, not a directory. Pass a "
                f"folder for the TensorBoard run. Received: log_dir={log_dir!r}"
            )
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise ValueError(
            f"`log_dir` cannot be created: {existing!r} is a file, not a directory, so no folder "
            f"can be made under it. Received: log_dir={log_dir!r}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"`log_dir` cannot be written: no write permission in {existing!r} (or it is on a "
            f"read-only file system). Received: log_dir={log_dir!r}"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".keras-bn-check-", dir=existing))
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise ValueError(
                f"`log_dir` cannot be written: no folder can be made in {existing!r} "
                f"({error.strerror or error}). Received: log_dir={log_dir!r}"
            ) from None


def unique_run_dir(root, name: str | None = None) -> str:
    """Create and return a fresh run folder ``<root>/<name or YYYYmmdd-HHMMSS>-<pid>-<n>``.

    The folder is made with ``os.mkdir``, which fails if it exists, and ``n`` counts up until
    one is free, so concurrent processes (distinct pids) and repeated calls in one process
    (distinct ``n``) always get distinct folders. `root` is created if needed.

    Example::

        cbs = keras_bn.callbacks.diagnostics(keras_bn.callbacks.unique_run_dir("logs"), probe=x[:256])
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"`root` must be a path (str or os.PathLike). Received: root={root!r}")
    root = os.fspath(root)
    if name is not None and (not isinstance(name, str) or not name or os.sep in name or name in (".", "..")):
        raise ValueError(f"`name` must be a non-empty folder name without {os.sep!r}, or None. Received: name={name!r}")
    check_writable_log_dir(root)
    os.makedirs(root, exist_ok=True)
    stem = f"{name or time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for n in itertools.count():
        path = os.path.join(root, f"{stem}-{n}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")
