"""Figures for TensorBoard's Images tab, drawn with matplotlib's Agg backend (no display).

Only the object-oriented API is used (``Figure`` + ``FigureCanvasAgg``), never pyplot, so
drawing neither opens windows nor touches global state. Each function returns an RGBA
``uint8`` array ``[height, width, 4]`` ready for ``write.image`` inside
``RunWriters.writing`` (or ``tf.summary.image``).

Usage::

    rgba = activation_histogram_grid({"block1_relu": (edges, counts)}, title="step 100")
    rgba = layer_bar_chart({"block1_dense": 0.3, "logits": 0.9}, ylabel="gradient L2 norm")
    rgba = time_gradient_chart({"lstm": norms_over_t}, title="step 100")

Inside `fit` they are drawn in the figure process (keras_bn.callbacks._figure_process).
"""

from __future__ import annotations

import math
import threading

import numpy as np

__all__ = ["activation_histogram_grid", "layer_bar_chart", "time_gradient_chart"]

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


class _Reused:
    """The last few figures drawn, by layout, redrawn with new data instead of built again:
    building the axes, ticks and texts costs as much as drawing them, and a run's figures keep
    their layout (same layers) from one fit to the next. One lock: figures of several runs'
    background threads are drawn one at a time (drawing holds the GIL anyway)."""

    SIZE = 8

    def __init__(self):
        self.lock = threading.Lock()
        self.figures: dict = {}

    def get(self, key, build):
        figure = self.figures.pop(key, None)
        if figure is None:
            figure = build()
            while len(self.figures) >= self.SIZE:
                self.figures.pop(next(iter(self.figures)))
        self.figures[key] = figure  # most recent last
        return figure


_REUSED = _Reused()


def activation_histogram_grid(histograms: dict, *, title: str = "", columns: int = 3) -> np.ndarray:
    """One panel per layer (input side first): the histogram ``(edges, counts)`` of its outputs.

    The grid of the classic weight-initialization study (SEEDS §4): shrinking or saturating
    activations show up as panels that narrow towards 0 or pile up at +-1.
    """
    names = list(histograms)
    filled = tuple(bool(len(histograms[name][1])) for name in names)
    key = ("histograms", tuple(names), filled, min(columns, max(len(names), 1)), bool(title))
    with _REUSED.lock:
        figure = _REUSED.get(key, lambda: _histogram_grid_figure(names, filled, columns, bool(title)))
        for axes, name in zip(figure.axes, names):
            edges, counts = histograms[name]
            if axes.patches:  # one filled step patch, not a bar per bin: 3x cheaper to draw
                axes.patches[0].set_data(np.asarray(counts, dtype=float), np.asarray(edges, dtype=float))
                axes.relim()
                axes.autoscale_view()
        if title:
            figure.texts[0].set_text(title)
        return _to_rgba(figure)


def _histogram_grid_figure(names, filled, columns, titled):
    count = max(len(names), 1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    width = MAX_WIDTH_PX / _DPI if columns > 1 else 4.0
    panel_height = 2.2
    height = panel_height * rows + 0.5
    figure = _new_figure(width, height)
    panels = list(figure.subplots(rows, columns, squeeze=False).flat)
    for axes, name, has_counts in zip(panels, names, filled):
        if has_counts:
            axes.stairs([0.0], [0.0, 1.0], fill=True, color="tab:blue")
        axes.set_title(_shorten(name, 34 // columns * 3 // 2 if columns > 1 else 40), fontsize=_LABEL_PT)
        axes.tick_params(labelsize=_TICK_PT)
        axes.locator_params(axis="x", nbins=4)
        axes.set_yticks([])
    for axes in panels[len(names):]:
        axes.set_axis_off()
    if titled:
        figure.suptitle(" ", fontsize=_TITLE_PT)
    # Fixed margins (in inches, converted to fractions) instead of tight_layout, which costs
    # more than the drawing itself.
    figure.subplots_adjust(left=0.15 / width, right=1 - 0.15 / width, bottom=0.35 / height,
                           top=1 - 0.6 / height, wspace=0.12, hspace=0.55)
    return figure


def layer_bar_chart(values: dict, *, ylabel: str, title: str = "", log_scale: bool = True) -> np.ndarray:
    """One bar per layer, input side on the left (the vanishing-gradient view, SEEDS §1).

    At most 800 px wide; with more layers than fit one readable label each, every k-th is named.
    """
    with _REUSED.lock:
        return _to_rgba(_layer_bar_figure(values, ylabel=ylabel, title=title, log_scale=log_scale))


def _layer_bar_figure(values: dict, *, ylabel: str, title: str, log_scale: bool):
    names = list(values)
    heights = np.asarray([values[n] for n in names], dtype=float)
    finite = np.isfinite(heights) & (heights > 0 if log_scale else True)
    log_scale = bool(log_scale and finite.any())
    key = ("bars", tuple(names), ylabel, log_scale, bool(title))
    figure = _REUSED.get(key, lambda: _bar_figure(names, ylabel, log_scale, bool(title)))
    axes = figure.axes[0]
    for bar, height, shown in zip(axes.patches, heights, finite):
        bar.set_visible(bool(shown))  # a NaN, inf or (log scale) non-positive norm: no bar
        bar.set_height(height if shown else 1.0)
    axes.relim(visible_only=True)
    axes.autoscale_view()
    if title:
        axes.set_title(title, fontsize=_TITLE_PT)
    return figure


def _bar_figure(names, ylabel, log_scale, titled):
    width = min(MAX_WIDTH_PX / _DPI, max(5.0, 0.3 * len(names) + 1.5))
    figure = _new_figure(width, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    axes.bar(np.arange(len(names)), np.ones(len(names)), color="tab:orange")
    step = max(1, math.ceil(len(names) / ((width - 1.2) * _DPI / 24)))  # ~24 px per slanted label
    shown = np.arange(0, len(names), step)
    axes.set_xticks(shown)
    axes.set_xticklabels([_shorten(names[i], 22) for i in shown], rotation=60, ha="right", fontsize=_TICK_PT)
    axes.tick_params(axis="y", labelsize=_TICK_PT)
    if log_scale:
        axes.set_yscale("log")
    axes.set_ylabel(ylabel, fontsize=_LABEL_PT)
    # Fixed margins from the longest label (tight_layout measures every text by drawing it,
    # which cost more than the drawing itself): a 60-degree label is its length times sin 60
    # high, at ~0.6 em per character.
    longest = max((len(_shorten(names[i], 22)) for i in shown), default=1)
    bottom = 0.25 + longest * _TICK_PT / 72 * 0.6 * math.sin(math.radians(60))
    height = figure.get_figheight()
    figure.subplots_adjust(left=0.95 / width, right=1 - 0.15 / width, bottom=bottom / height,
                           top=1 - (0.45 if titled else 0.2) / height)
    return figure


def time_gradient_chart(norms: dict, *, title: str = "") -> np.ndarray:
    """One line per recurrent layer: ``||dL/dh_t||`` over the time steps t (log scale), the
    vanishing or exploding gradient through time (SEEDS §1). Non-positive norms are left out."""
    with _REUSED.lock:
        figure = _new_figure(5.5, 3.4)
        axes = figure.add_subplot(1, 1, 1)
        for key, values in norms.items():
            values = np.asarray(values, dtype=float)
            t = np.arange(1, len(values) + 1)
            positive = values > 0
            axes.plot(t[positive], values[positive], label=key)
        axes.set_yscale("log")
        axes.set(xlabel="time step t (processing order)", ylabel="||dL/dh_t||", title=title)
        axes.legend(fontsize=7)
        figure.tight_layout()
        return _to_rgba(figure)


def _shorten(name: str, limit: int) -> str:
    """`name` cut in the middle to `limit` characters (layer paths keep both ends)."""
    if len(name) <= limit:
        return name
    keep = max(limit - 1, 2)
    return name[: keep // 2] + "…" + name[-(keep - keep // 2):]
