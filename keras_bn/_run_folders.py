"""Recipe output folders: one fresh folder per invocation, never an old one reused or deleted.

A recipe writes everything of one invocation to ``<log_dir>/<recipe>/<YYYYmmdd-HHMMSS>/``
(``-2``, ``-3``, ... when that name is taken), with a marker file `MARKER` naming the recipe,
its arguments and its start time. `newest_invocation` finds the newest one under a recipe
folder; ``keras-bn tensorboard`` and ``keras-bn report`` use it so that the folder a recipe
prints is enough. Nothing here imports TensorFlow or Keras.

Usage::

    folder = new_invocation_dir("logs/bn_vs_no_bn", recipe="bn_vs_no_bn", argv=["--quick"])
    newest_invocation("logs/bn_vs_no_bn")  # -> Path("logs/bn_vs_no_bn/20261201-093000")
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

__all__ = ["MARKER", "invocations", "new_invocation_dir", "newest_invocation", "resolve_log_dir"]

MARKER = "keras-bn-invocation.json"


def new_invocation_dir(recipe_dir, *, recipe: str, argv=()) -> Path:
    """Create and return a fresh ``<recipe_dir>/<YYYYmmdd-HHMMSS>[-n]/`` with its marker.

    The folder is made with ``os.mkdir``, which fails when it exists, so a second run in
    the same second (or a concurrent one) gets ``-2``; nothing existing is touched.
    """
    recipe_dir = Path(recipe_dir)
    recipe_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    stem = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    for n in itertools.count(1):
        path = recipe_dir / (stem if n == 1 else f"{stem}-{n}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        break
    marker = {"recipe": recipe, "argv": [str(a) for a in argv], "started": started}
    (path / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    return path


def _started(folder: Path) -> float | None:
    try:
        return float(json.loads((folder / MARKER).read_text())["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def invocations(folder) -> list[Path]:
    """The invocation folders directly under `folder`, oldest first (by their start time)."""
    folder = Path(folder)
    try:
        children = [c for c in folder.iterdir() if c.is_dir()]
    except OSError:
        return []
    dated = [(started, c.name, c) for c in children if (started := _started(c)) is not None]
    return [c for _, _, c in sorted(dated)]


def newest_invocation(folder) -> Path | None:
    """The newest invocation folder of the recipe folder `folder`; `folder` itself when it
    is one; None when it holds none (a plain log folder)."""
    folder = Path(folder)
    if _started(folder) is not None:
        return folder
    found = invocations(folder)
    return found[-1] if found else None


def resolve_log_dir(folder) -> tuple[Path, str | None]:
    """`folder`, or the newest invocation inside it, and a line saying which was picked
    (None when `folder` is used as given)."""
    folder = Path(folder)
    newest = newest_invocation(folder)
    if newest is None or newest == folder:
        return folder, None
    count = len(invocations(folder))
    return newest, f"keras-bn: {folder} holds {count} run(s) of a recipe; showing the newest, {newest}"
