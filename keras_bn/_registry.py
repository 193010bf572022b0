"""Name -> object tables with forgiving lookup and errors that list every choice.

Names fold case, ``-`` and ``_`` (``"Leaky-ReLU"`` finds ``"leaky_relu"``), and aliases map to
one canonical name. An unknown name raises ``ValueError`` listing the choices and a
"did you mean".

Usage::

    NORMS = Registry("norm", {"batch": ..., "layer": ...}, aliases={"bn": "batch"})
    NORMS.canonical("BN")  # -> "batch"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from keras_bn._validation import did_you_mean

T = TypeVar("T")


def fold_name(name: str) -> str:
    """Lower-case `name` and turn ``-``/spaces into ``_``."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


class Registry(Generic[T]):
    """A read-only table of named entries for one argument (`kind`)."""

    def __init__(self, kind: str, entries: Mapping[str, T], aliases: Mapping[str, str] | None = None):
        self.kind = kind
        self._entries = dict(entries)
        self._aliases = {fold_name(k): v for k, v in (aliases or {}).items()}

    def names(self) -> list[str]:
        """The canonical names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.lookup(name) is not None

    def lookup(self, name: str) -> str | None:
        """The canonical name for `name`, or None when unknown."""
        key = fold_name(name)
        key = self._aliases.get(key, key)
        return key if key in self._entries else None

    def canonical(self, name: object) -> str:
        """The canonical name for `name`; raise ValueError listing the choices if unknown."""
        if not isinstance(name, str):
            raise TypeError(f"`{self.kind}` must be a string. Received: {self.kind}={name!r}")
        key = self.lookup(name)
        if key is None:
            raise ValueError(self.unknown_message(name))
        return key

    def unknown_message(self, name: object, extra: str = "") -> str:
        listed = ", ".join(repr(n) for n in self._entries)
        choices = list(self._entries) + list(self._aliases)
        return (
            f"Unknown `{self.kind}`: {name!r}. Expected one of: {listed}{extra}."
            f"{did_you_mean(fold_name(name) if isinstance(name, str) else name, choices)}"
            f" Received: {self.kind}={name!r}"
        )

    def get(self, name: str) -> T:
        """The entry for `name` (see `canonical`)."""
        return self._entries[self.canonical(name)]
