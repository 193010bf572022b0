"""The custom-scalars dashboard layout (keras_bn/callbacks/_layout.py), checked on the Layout proto
as TensorBoard's plugin reads it (each chart regex applied with ``re.match`` to every tag)."""

from __future__ import annotations

import re

from keras_bn import events
from keras_bn.callbacks._layout import (CUSTOM_SCALARS_CATEGORY, MAX_LINES_PER_CHART, LayerTags,
                                        custom_scalars_layout)
from keras_bn.callbacks._writer import RunWriters

METRICS_CHARTS = {  # as MetricsLogger registers them
    "loss (batch: running epoch mean; epoch: train and validation)": r"(batch|epoch)_loss",
    "metrics (batch and epoch)": r"(batch|epoch)_(?!loss$|learning_rate$).*",
}
KERAS_TAGS = ["batch_loss", "epoch_loss", "batch_accuracy", "epoch_accuracy", "epoch_learning_rate"]


def lines(chart, tags):
    """The tags a chart draws: those that one of its regexes matches (TensorBoard's rule)."""
    return [tag for tag in tags if any(re.match(regex, tag) for regex in chart.multiline.tag)]


def charts_of(layout):
    return [chart for category in layout.category for chart in category.chart]


def test_epoch_series_get_charts_of_their_own_apart_from_batch_series():
    charts = charts_of(custom_scalars_layout(METRICS_CHARTS))
    drawn = {chart.title: lines(chart, KERAS_TAGS) for chart in charts}
    assert drawn == {
        "loss per step (batch_*, x = optimizer step)": ["batch_loss"],
        "loss per epoch (epoch_*, x = epoch index)": ["epoch_loss"],
        "metrics per step (batch_*, x = optimizer step)": ["batch_accuracy"],
        "metrics per epoch (epoch_*, x = epoch index)": ["epoch_accuracy"],
    }
    assert [c.title.split(" ")[0] for c in charts] == ["loss", "loss", "metrics", "metrics"]  # dict order kept


def test_a_chart_of_many_layers_is_split_into_input_middle_and_output_side_charts():
    names = [f"dense_{i}" if i else "dense" for i in range(20)]  # dense, dense_1, ..., dense_19
    tags = [f"grad_norm/{name}" for name in names]
    layer_tags = LayerTags()
    assert layer_tags.add(tags) and not layer_tags.add(tags[:3])  # True only for new tags
    charts = charts_of(custom_scalars_layout({"gradient norm per layer": r"grad_norm/.*"}, layer_tags))
    drawn = [lines(chart, tags + ["grad_norm_preclip/dense", "grad_global/norm"]) for chart in charts]
    assert [chart.title for chart in charts] == [
        "gradient norm per layer: input-side (layers 1-7 of 20)",
        "gradient norm per layer: middle (layers 8-14 of 20)",
        "gradient norm per layer: output-side (layers 15-20 of 20)",
    ]
    assert drawn == [tags[:7], tags[7:14], tags[14:]]  # each layer once, in the model's order
    assert all(len(d) <= MAX_LINES_PER_CHART for d in drawn)


def test_a_chart_of_few_layers_keeps_its_one_regex():
    tags = LayerTags()
    tags.add([f"grad_norm/block{i}_dense" for i in range(MAX_LINES_PER_CHART)])
    charts = charts_of(custom_scalars_layout({"gradient norm per layer": r"grad_norm/.*"}, tags))
    assert [(c.title, list(c.multiline.tag)) for c in charts] == [("gradient norm per layer", ["grad_norm/.*"])]


def test_run_writers_rewrite_the_layout_when_more_layers_appear(tmp_path):
    writers = RunWriters(str(tmp_path))
    writers.add_charts({"gradient norm per layer": r"grad_norm/.*", **METRICS_CHARTS})
    with writers.writing("train", 1) as write:
        write.scalar("batch_loss", 1.0)
    with writers.writing("train", 2) as write:
        write.scalars({f"grad_norm/layer{i}": 0.1 for i in range(12)})
    writers.close()
    from tensorboard.plugins.custom_scalar import layout_pb2

    layouts = [layout_pb2.Layout.FromString(value.tensor.string_val[0])
               for path in events.event_files(tmp_path / "train") for _, event in events.iter_events(path)
               for value in event.summary.value if value.tag == "custom_scalars__config__"]
    assert len(layouts) == 2  # the first train write, then again once the 12 layers appeared
    last = layouts[-1]
    assert [c.title for c in last.category] == [CUSTOM_SCALARS_CATEGORY]
    assert [c.title for c in charts_of(last)][-3:] == [
        "gradient norm per layer: input-side (layers 1-4 of 12)",
        "gradient norm per layer: middle (layers 5-8 of 12)",
        "gradient norm per layer: output-side (layers 9-12 of 12)",
    ]
