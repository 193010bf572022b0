"""Figures for TensorBoard's Images tab, drawn with matplotlib's Agg backend (no display).

Only the object-oriented API is used (``Figure`` + ``FigureCanvasAgg``), never pyplot, so
drawing neither opens windows nor touches global state. Each function returns an RGBA
``uint8`` array ``[height, width, 4]`` ready for ``write.image`` inside
``RunWriters.writing`` (or ``tf.summary.image``).

Usage::

    rgba = activation_histogram_grid({"block1_relu": (edges, counts)}, title="step 100")
    rgba = layer_bar_chart({"block1_dense": 0.3, "logits": 0.9}, ylabel="gradient L2 norm")
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["activation_histogram_grid", "layer_bar_chart"]

# Sized for TensorBoard's Images tab, which shows an image at most about a card wide
# (~500-800 px): at most 800 px wide, and text at >= 12 px (9 pt at 100 dpi is 12.5 px).
_DPI = 100
MAX_WIDTH_PX = 800
_TICK_PT, _LABEL_PT, _TITLE_PT = 9, 10, 11


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _to_rgba(figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba(), dtype=np.uint8).copy()


def activation_histogram_grid(histograms: dict, *, title: str = "", columns: int = 3) -> np.ndarray:
    """One panel per layer (input side first): the histogram ``(edges, counts)`` of its outputs.

    The grid of the classic weight-initialization study (SEEDS §4): shrinking or saturating
    activations show up as panels that narrow towards 0 or pile up at +-1.
    """
    count = max(len(histograms), 1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    width = MAX_WIDTH_PX / _DPI if columns > 1 else 4.0
    panel_height = 2.2
    height = panel_height * rows + 0.5
    figure = _new_figure(width, height)
    panels = list(figure.subplots(rows, columns, squeeze=False).flat)
    for axes, (name, (edges, counts)) in zip(panels, histograms.items()):
        if len(counts):  # one filled step patch, not a bar per bin: 3x cheaper to draw
            axes.stairs(np.asarray(counts, dtype=float), np.asarray(edges, dtype=float), fill=True, color="tab:blue")
        axes.set_title(_shorten(name, 34 // columns * 3 // 2 if columns > 1 else 40), fontsize=_LABEL_PT)
        axes.tick_params(labelsize=_TICK_PT)
        axes.locator_params(axis="x", nbins=4)
        axes.set_yticks([])
    for axes in panels[len(histograms):]:
        axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=_TITLE_PT)
    # Fixed margins (in inches, converted to fractions) instead of tight_layout, which costs
    # more than the drawing itself.
    figure.subplots_adjust(left=0.15 / width, right=1 - 0.15 / width, bottom=0.35 / height,
                           top=1 - 0.6 / height, wspace=0.12, hspace=0.55)
    return _to_rgba(figure)


def layer_bar_chart(values: dict, *, ylabel: str, title: str = "", log_scale: bool = True) -> np.ndarray:
    """One bar per layer, input side on the left (the vanishing-gradient view, SEEDS §1).

    At most 800 px wide; with more layers than fit one readable label each, every k-th is named.
    """
    return _to_rgba(_layer_bar_figure(values, ylabel=ylabel, title=title, log_scale=log_scale))


def _layer_bar_figure(values: dict, *, ylabel: str, title: str, log_scale: bool):
    names = list(values)
    heights = np.asarray([values[n] for n in names], dtype=float)
    finite = np.isfinite(heights) & (heights > 0 if log_scale else True)
    width = min(MAX_WIDTH_PX / _DPI, max(5.0, 0.3 * len(names) + 1.5))
    figure = _new_figure(width, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    axes.bar(np.arange(len(names))[finite], heights[finite], color="tab:orange")
    step = max(1, math.ceil(len(names) / ((width - 1.2) * _DPI / 24)))  # ~24 px per slanted label
    shown = np.arange(0, len(names), step)
    axes.set_xticks(shown)
    axes.set_xticklabels([_shorten(names[i], 22) for i in shown], rotation=60, ha="right", fontsize=_TICK_PT)
    axes.tick_params(axis="y", labelsize=_TICK_PT)
    if log_scale and finite.any():
        axes.set_yscale("log")
    axes.set_ylabel(ylabel, fontsize=_LABEL_PT)
    if title:
        axes.set_title(title, fontsize=_TITLE_PT)
    figure.tight_layout()
    return figure


def _shorten(name: str, limit: int) -> str:
    """`name` cut in the middle to `limit` characters (layer paths keep both ends)."""
    if len(name) <= limit:
        return name
    keep = max(limit - 1, 2)
    return name[: keep // 2] + "…" + name[-(keep - keep // 2):]
