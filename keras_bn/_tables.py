"""One Markdown table format for every printed table (recipes, sanity checks, search).

Usage::

    print(format_table(["model", "acc"], [["no_bn", 0.8687]]))
"""

from __future__ import annotations

from collections.abc import Sequence


def format_cell(value: object) -> str:
    """Floats to 4 significant digits (scientific past 1e4), anything else as str."""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table: it reads in a terminal and pastes into docs/RESULTS.md."""
    text = [[format_cell(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) if text else len(c) for i, c in enumerate(columns)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in text])
