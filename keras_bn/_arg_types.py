"""Range-checked argparse types and the one-line error of the ``keras-bn`` command.

Each type turns the option's text into a value or raises ``argparse.ArgumentTypeError``
saying what is allowed and what was received; `ArgumentParser.error` prints that as one line
``keras-bn: error: ...`` and exits with code 2 (no usage block, no traceback). Nothing here
imports TensorFlow or Keras.

Usage::

    parser = ArgumentParser(prog="keras-bn run bn_vs_no_bn")
    parser.add_argument("--batch-size", type=positive_int, default=64)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

__all__ = [
    "EXIT_CODES",
    "ArgumentParser",
    "dataset_name",
    "debug_requested",
    "existing_dir",
    "fraction",
    "int_in",
    "nonneg_int",
    "port",
    "positive_float",
    "positive_int",
    "seed",
    "writable_dir",
]

# One table for every command (printed by `keras-bn --help`, documented in docs/cli.md).
EXIT_CODES = {
    0: "done",
    1: "done, with error-level findings (report)",
    2: "bad usage or input, or the command failed (one line says why; --debug shows the traceback)",
    3: "nothing readable (report on a folder with no readable run)",
}


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line ``keras-bn: error: ...`` and exit code 2."""

    def error(self, message):
        hint = f" (`{self.prog} --help` lists the options)"
        self.exit(2, f"keras-bn: error: {message}{hint}\n")


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {name}. Received: {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number. Received: {text!r}")
    return value


def int_in(low: int, high: int | None = None):
    """An argparse type for an integer in [`low`, `high`] (`high` None: no upper bound)."""
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}. Received: {text!r}")
        return value

    parse.__name__ = f"integer {allowed}"
    return parse


positive_int = int_in(1)
nonneg_int = int_in(0)
seed = int_in(0, 2**32 - 1)  # numpy's and TensorFlow's seed range
port = int_in(1, 65535)


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, standard deviations)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0. Received: {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1] (an accuracy target, a share)."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1]. Received: {text!r}")
    return value


def _path_text(text: str) -> str:
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be a non-empty path without NUL characters. Received: {text!r}")
    return text


def existing_dir(text: str) -> str:
    """A folder that exists."""
    path = Path(_path_text(text))
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"must be an existing folder; {text!r} {what}")
    return text


def writable_dir(text: str) -> str:
    """A folder that exists or can be created, and can be written: created here, left empty."""
    path = Path(_path_text(text))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"must be a folder keras-bn can create; {text!r}: {err.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"must be a writable folder; {text!r} is not writable")
    return text


def dataset_name(text: str) -> str:
    """A data set name of `keras_bn.data.load` (aliases allowed), as its canonical name."""
    from keras_bn.data import DATASETS

    name = DATASETS.lookup(text)
    if name is None:
        raise argparse.ArgumentTypeError(
            f"must be one of: {', '.join(DATASETS.names())}. Received: {text!r}")
    return name


def debug_requested(argv: list[str] | None) -> bool:
    """Whether ``--debug`` is among the command-line words (before a bare ``--``)."""
    words = sys.argv[1:] if argv is None else list(argv)
    if "--" in words:
        words = words[: words.index("--")]
    return "--debug" in words
