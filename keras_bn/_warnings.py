"""Warnings that point at the user's line, not at keras-bn's (or Keras') own source.

``warnings.warn(msg, stacklevel=2)`` names the caller, which inside keras-bn is often another
keras-bn function, or Keras' ``fit`` loop for a callback. `warn` walks the stack to the first
frame outside keras-bn, Keras, TensorFlow and the standard library's ``contextlib``, and
warns with that stack level, so the warning shows the line the user wrote.

Usage (inside keras-bn)::

    from keras_bn._warnings import warn
    warn("`bins` is large; the histogram costs 80 MB per read", RuntimeWarning)
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["user_stacklevel", "warn"]

_INTERNAL = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules[__name__.rsplit(".", 1)[0]],))
_LIBRARIES = ("keras", "tensorflow", "tf_keras", "contextlib", "threading")


def _is_internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    if path.startswith(_INTERNAL) or filename.startswith("<frozen"):
        return True
    parts = path.split(os.sep)
    return any(part in _LIBRARIES or part == f"{lib}.py" for lib in _LIBRARIES for part in parts[-4:])


def user_stacklevel() -> int:
    """The `stacklevel` for ``warnings.warn`` called from the caller of this function that
    names the first frame outside keras-bn and the libraries it runs inside."""
    frame, level = sys._getframe(1), 1  # the function that calls user_stacklevel
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the user's line."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
