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


def test_histogram_grid_is_at_most_a_card_wide_with_three_panels_a_row():
    edges, counts = np.linspace(-1, 1, 31), np.ones(30)
    image = figures.activation_histogram_grid({f"layer{i}": (edges, counts) for i in range(7)})
    height, width, _ = image.shape
    assert width == figures.MAX_WIDTH_PX and height == int(round((2.2 * 3 + 0.5) * figures._DPI))  # 3 rows
    assert figures._TICK_PT * figures._DPI / 72 >= 12


def test_long_layer_paths_keep_both_ends():
    assert figures._shorten("encoder/stage3/block12_relu", 15) == "encoder\u202612_relu"  # 15 characters
    assert figures._shorten("short", 15) == "short"
