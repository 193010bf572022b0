"""Tests for keras_bn.callbacks.figures: images readable at TensorBoard's default size."""

from __future__ import annotations

import numpy as np
import pytest

from keras_bn.callbacks import figures


@pytest.mark.parametrize("layers", [3, 9, 80])
def test_bar_chart_fits_a_card_with_readable_labels_that_do_not_overlap(layers):
    values = {f"encoder/block{i}_conv": 10.0 ** (-i / 10) for i in range(layers)}
    image = figures.layer_bar_chart(values, ylabel="gradient L2 norm", title="step 1")
    height, width, _ = image.shape
    assert 480 <= width <= figures.MAX_WIDTH_PX and 380 <= height <= 450  # was 288 x 230
    figure = figures._layer_bar_figure(values, ylabel="gradient L2 norm", title="step 1", log_scale=True)
    figure.canvas.draw()
    axes = figure.axes[0]
    labels = [t for t in axes.get_xticklabels() if t.get_text()]
    assert labels and all(t.get_fontsize() * figure.dpi / 72 >= 12 for t in labels)  # >= 12 px text
    # Slanted labels do not overlap when neighbours are further apart, across the slant,
    # than the text is high.
    x = [axes.transData.transform((t.get_position()[0], 1.0))[0] for t in labels]
    across = np.min(np.diff(x)) * np.sin(np.radians(labels[0].get_rotation())) if len(x) > 1 else np.inf
    assert across >= labels[0].get_fontsize() * figure.dpi / 72
    assert len(labels) == layers if layers <= 20 else 10 <= len(labels) < layers  # thinned, not crammed
    # Every text is inside the image (fixed margins, no tight_layout), and the plot keeps most of it.
    renderer = figure.canvas.get_renderer()
    low, high = sorted(axes.get_ylim())
    shown_y = [t for t in axes.get_yticklabels() if low <= t.get_position()[1] <= high]  # ticks in view
    texts = labels + shown_y + [axes.yaxis.label, axes.title]
    for text in (t for t in texts if t.get_text() and t.get_visible()):
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, text.get_text()
    plot = axes.get_window_extent(renderer)
    assert plot.width >= 0.6 * width and plot.height >= 0.4 * height


def test_histogram_grid_is_at_most_a_card_wide_with_three_panels_a_row():
    edges, counts = np.linspace(-1, 1, 31), np.ones(30)
    image = figures.activation_histogram_grid({f"layer{i}": (edges, counts) for i in range(7)})
    height, width, _ = image.shape
    assert width == figures.MAX_WIDTH_PX and height == int(round((2.2 * 3 + 0.5) * figures._DPI))  # 3 rows
    assert figures._TICK_PT * figures._DPI / 72 >= 12


def test_long_layer_paths_keep_both_ends():
    assert figures._shorten("encoder/stage3/block12_relu", 15) == "encoder\u202612_relu"  # 15 characters
    assert figures._shorten("short", 15) == "short"


@pytest.mark.parametrize("chart", ["bars", "histograms"])
def test_a_redrawn_figure_is_the_image_a_new_figure_would_be(chart):
    rng = np.random.default_rng(0)
    names = [f"block{i}_relu" for i in range(4)]
    counts = rng.random((4, 20))

    def draw(scales):
        if chart == "bars":
            values = dict(zip(names, scales))
            values["block2_relu"] = float("nan") if scales[0] > 0.5 else values["block2_relu"]
            return figures.layer_bar_chart(values, ylabel="gradient L2 norm", title=f"step {scales[0]:.3f}")
        histograms = {n: (np.linspace(-v, 3 * v, 21), c * 10 * v) for n, v, c in zip(names, scales, counts)}
        return figures.activation_histogram_grid(histograms, title=f"step {scales[0]:.3f}")

    first, second = rng.random(4) * 0.4 + 0.01, rng.random(4) * 5 + 0.6
    figures._REUSED.figures.clear()
    draw(first)
    redrawn = draw(second)  # the figure of `first`, redrawn
    figures._REUSED.figures.clear()
    new = draw(second)
    assert len(figures._REUSED.figures) == 1
    np.testing.assert_array_equal(redrawn, new)
    (figure,) = figures._REUSED.figures.values()
    for axes, scale, c in zip(figure.axes, second, counts):  # the axes enclose the new data, tightly
        if chart == "bars":
            low, high = axes.get_ylim()
            shown = [v for n, v in zip(names, second) if n != "block2_relu"]
            assert low <= min(shown) and max(shown) <= high <= 3 * max(shown)
        else:
            left, right = axes.get_xlim()
            assert left <= -scale and 3 * scale <= right <= 3.5 * scale
            assert max(c) * 10 * scale <= axes.get_ylim()[1] <= 1.2 * max(c) * 10 * scale
    assert not np.array_equal(redrawn, draw(first))  # the data shows


def test_at_most_a_few_figures_are_kept():
    figures._REUSED.figures.clear()
    for i in range(figures._Reused.SIZE + 3):
        figures.layer_bar_chart({f"layer{i}": 1.0}, ylabel="norm")
    assert len(figures._REUSED.figures) == figures._Reused.SIZE
