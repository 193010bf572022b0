"""Argument checks with one error wording everywhere.

Every check raises ``ValueError`` (or ``TypeError`` for a wrong type) as one sentence:
the argument name in backticks, what is allowed, then ``Received: name=value``.

Usage::

    check_positive_int("units", 32)
    check_choice("norm_position", "before", ("before", "after"))
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping, Sequence, Set


def did_you_mean(value: object, choices: Iterable[object]) -> str:
    """Return ``" Did you mean 'x'?"`` for a close string match, else ``""``."""
    if not isinstance(value, str):
        return ""
    names = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(value.lower(), names, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_choice(name: str, value: object, choices: Sequence[object]) -> object:
    """Return `value` if it is one of `choices`, else raise ValueError listing them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(
            f"`{name}` must be one of: {listed}.{did_you_mean(value, choices)} "
            f"Received: {name}={value!r}"
        )
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Return `value` as int if it is an integer >= `minimum`."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an integer. Received: {name}={value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_positive_int(name: str, value: object) -> int:
    """Return `value` as int if it is an integer >= 1."""
    return check_int(name, value, minimum=1)


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return `value` as float if it is a finite real number in the given range."""
    if not _is_number(value):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r}")
    value = float(value)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    infinite = value in (float("inf"), float("-inf"))
    if infinite or value != value or too_low or too_high:
        lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        finite = ", a finite number" if infinite else ""
        raise ValueError(f"`{name}` must be in {lo}, {hi}{finite}. Received: {name}={value!r}")
    return value


def check_int_list(name: str, value: object, *, allow_empty: bool = False) -> list[int]:
    """Return `value` as a list of positive ints (an int is taken as a one-item list)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes, Set, Mapping)) or not isinstance(value, Iterable):
        unordered = " (a set or dict has no order; pass a list)" if isinstance(value, (Set, Mapping)) else ""
        raise TypeError(
            f"`{name}` must be a list of positive integers{unordered}. Received: {name}={value!r}"
        )
    items = list(value)
    if not items and not allow_empty:
        raise ValueError(
            f"`{name}` must be a non-empty list of positive integers. Received: {name}={value!r}"
        )
    for item in items:
        if not isinstance(item, numbers.Integral) or isinstance(item, bool) or item < 1:
            raise ValueError(
                f"`{name}` must contain only positive integers; {item!r} is not one. "
                f"Received: {name}={value!r}"
            )
    return [int(i) for i in items]


def check_shape(name: str, value: object, *, ranks: Sequence[int]) -> tuple[int, ...]:
    """Return `value` as a tuple of positive ints whose length is one of `ranks`."""
    dims = check_int_list(name, value)
    if len(dims) not in ranks:
        allowed = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"`{name}` must have {allowed} dimensions (batch axis excluded). "
            f"Received: {name}={value!r}"
        )
    return tuple(dims)


def check_image_input(input_shape: object, data_format: object,
                      data_formats: Sequence[str]) -> tuple[tuple[int, ...], int, tuple[int, ...] | None]:
    """Check an image builder's `input_shape` (``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``) and
    `data_format`; say at build time when channels_first cannot run here.

    Returns ``(input_shape, in_channels, reshaped)``: `reshaped` is the shape with a channel
    axis of 1 added to an ``(H, W)`` input, None for an input that has its channel axis.
    """
    shape = check_shape("input_shape", input_shape, ranks=(2, 3))
    check_choice("data_format", data_format, data_formats)
    from keras_bn._backend import warn_if_channels_first_cannot_run  # imports Keras only when asked

    warn_if_channels_first_cannot_run(data_format)
    first = data_format == "channels_first"
    if len(shape) == 2:
        return shape, 1, (1, *shape) if first else (*shape, 1)
    return shape, shape[0 if first else -1], None
