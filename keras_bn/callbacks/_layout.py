"""The custom-scalars dashboard: which charts a diagnostics run shows, in which order.

Callbacks register charts as ``{title: tag regex}`` (`RunWriters.add_charts`); this module
turns them into TensorBoard's ``Layout`` proto so that each chart has one x axis and stays
readable:

- a chart over ``(batch|epoch)_...`` is split in two: ``batch_*`` series (x = optimizer step)
  and ``epoch_*`` series (x = epoch index, as Keras logs them), so epoch points do not pile up
  at x = 0..epochs beside the steps;
- a per-layer chart (``grad_norm/.*`` etc.) over more than `MAX_LINES_PER_CHART` layers is split
  into input-side, middle and output-side charts, in the order the layers were first written
  (the model's order), so no chart holds more lines than one can tell apart.

Usage (inside keras-bn)::

    tags = LayerTags(); tags.add(["grad_norm/dense", "grad_norm/dense_1"])
    layout = custom_scalars_layout({"gradient norm per layer": r"grad_norm/.*"}, tags)
"""

from __future__ import annotations

import math
import re

from keras_bn import _keras_internals as internals

__all__ = ["CHART_ORDER", "CUSTOM_SCALARS_CATEGORY", "LayerTags", "MAX_LINES_PER_CHART", "PERCENTILES_CATEGORY",
           "chart_list", "custom_scalars_layout"]

CUSTOM_SCALARS_CATEGORY = "keras-bn diagnostics"
PERCENTILES_CATEGORY = "keras-bn: pre-activation percentiles (BN paper, Fig. 1)"
# Charts appear in this order (by the start of their tag regex): what diagnoses a run first.
CHART_ORDER = ("batch_loss", "epoch_loss", "batch_", "epoch_", "grad_norm/", "grad_global/", "update_ratio/",
               "dead_fraction/", "saturation/", "activation_std/", "activation_mean/", "zero_fraction/",
               "grad_norm_preclip/")
MAX_LINES_PER_CHART = 8
SIDES = ("input-side", "middle", "output-side")
_BATCH_OR_EPOCH = "(batch|epoch)_"
_PER_LAYER = re.compile(r"^([a-z_]+)/\.\*$")  # "grad_norm/.*": one line per layer


class LayerTags:
    """The per-layer tags written so far, per quantity, in the order they first appeared."""

    def __init__(self):
        self.by_quantity: dict[str, dict[str, None]] = {}

    def add(self, tags) -> bool:
        """Record `tags`; True when one of them is new (the layout may need rewriting)."""
        new = False
        for tag in tags:
            quantity, slash, _ = tag.partition("/")
            if not slash:
                continue
            seen = self.by_quantity.setdefault(quantity, {})
            if tag not in seen:
                seen[tag] = None
                new = True
        return new


def _rank(regex: str) -> int:
    return next((i for i, prefix in enumerate(CHART_ORDER) if regex.startswith(prefix)), len(CHART_ORDER))


def _split_batch_epoch(title: str, regex: str) -> list[tuple[str, list[str]]]:
    rest = regex[len(_BATCH_OR_EPOCH):]
    name = title.split(" (")[0]
    return [(f"{name} per step (batch_*, x = optimizer step)", [f"batch_{rest}"]),
            (f"{name} per epoch (epoch_*, x = epoch index)", [f"epoch_{rest}"])]


def _split_layers(title: str, tags: list[str]) -> list[tuple[str, list[str]]]:
    size = math.ceil(len(tags) / len(SIDES))
    charts = []
    for i, side in enumerate(SIDES):
        part = tags[i * size:(i + 1) * size]
        if part:
            where = f"layers {i * size + 1}-{i * size + len(part)} of {len(tags)}"
            charts.append((f"{title}: {side} ({where})", [f"^{re.escape(tag)}$" for tag in part]))
    return charts


def chart_list(charts: dict[str, str], layer_tags: LayerTags | None = None) -> list[tuple[str, str, list[str]]]:
    """``[(category, title, [tag regex, ...]), ...]`` in dashboard order."""
    layer_tags = layer_tags or LayerTags()
    result = []
    for title, regex in sorted(charts.items(), key=lambda item: _rank(item[1])):
        category = PERCENTILES_CATEGORY if regex.startswith("preact/") else CUSTOM_SCALARS_CATEGORY
        per_layer = _PER_LAYER.match(regex)
        tags = list(layer_tags.by_quantity.get(per_layer.group(1), {})) if per_layer else []
        if regex.startswith(_BATCH_OR_EPOCH):
            parts = _split_batch_epoch(title, regex)
        elif len(tags) > MAX_LINES_PER_CHART:
            parts = _split_layers(title, tags)
        else:
            parts = [(title, [regex])]
        result += [(category, part_title, part_regexes) for part_title, part_regexes in parts]
    result.sort(key=lambda chart: _rank(chart[2][0].lstrip("^")))  # stable: split parts keep their order
    return result


def custom_scalars_layout(charts: dict[str, str], layer_tags: LayerTags | None = None):
    """TensorBoard's custom-scalars ``Layout`` proto for `charts` (see the module docstring)."""
    layout_pb2 = internals.tensorboard_layout_pb2()
    categories: dict[str, list] = {CUSTOM_SCALARS_CATEGORY: [], PERCENTILES_CATEGORY: []}
    for category, title, regexes in chart_list(charts, layer_tags):
        categories[category].append(
            layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=regexes)))
    return layout_pb2.Layout(
        category=[layout_pb2.Category(title=title, chart=items) for title, items in categories.items() if items])
