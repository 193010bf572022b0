"""Read a diagnostics run back from its event files and say what looks wrong.

`read_run(log_dir)` loads every scalar of a run (``<log_dir>/train`` or the folder itself)
with keras-bn's streaming reader (`keras_bn.events`); `report(log_dir)` turns the tags written by
`keras_bn.callbacks.diagnostics` into a per-layer table and a list of warnings.
``keras-bn report LOGDIR`` prints it.

Warning thresholds, and where they come from:

========================= ============ ===================================================
what                      threshold    source
========================= ============ ===================================================
dead ReLU units           > 40 %       SEEDS §2: a trained net often has 10-20 % dead units;
                                       twice the upper end is a problem, not the norm
saturated tanh/sigmoid    > 30 %       SEEDS §4: N(0, 0.05^2) init saturates most units
update ratio too high     > 1e-2       SEEDS §7 (CS231n): ||dW|| / ||W|| should be ~1e-3
update ratio too low      < 1e-5       same guide line, 100x below it
vanishing gradients       first/last   SEEDS §1: the first layer's gradient norm below
                          < 1e-2       1/100 of the last layer's
exploding gradients       first/last   the mirror image, or any non-finite gradient
                          > 1e2
collapsing activations    last/first   SEEDS §4: with N(0, 0.01^2) tanh activations shrink
                          std < 0.15   layer by layer toward 0
========================= ============ ===================================================

Layers are ordered by a natural sort of their names (``block2`` before ``block10``), which
matches the builders' names and Keras' default ``dense``, ``dense_1``, ... names. The
gradient comparison leaves out normalization layers (their gamma/beta gradients are not the
signal that vanishes), and the activation comparison uses the activation layers (those with
a dead or saturation fraction) where there are any.

Usage::

    print(keras_bn.report.report("logs/init_study/tanh_std0.01"))
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

DEAD_FRACTION_WARN = 0.40
SATURATION_WARN = 0.30
UPDATE_RATIO_HIGH = 1e-2
UPDATE_RATIO_LOW = 1e-5
VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
ACTIVATION_COLLAPSE_RATIO = 0.15

NORM_LAYER = re.compile(r"(_bn|_ln|_gn|_syncbn|normalization(_\d+)?)$")
PER_LAYER = ("grad_norm", "update_ratio", "dead_fraction", "saturation", "activation_std")


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _event_folder(log_dir: Path) -> Path:
    train = log_dir / "train"
    return train if train.is_dir() else log_dir


def read_run(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run as ``{tag: [(step, value), ...]}``, sorted by step (streamed by
    `keras_bn.events.read_run`; `keras_bn.events.read_run_details` also says what it could not read)."""
    from keras_bn import events

    return events.read_run(log_dir)


@dataclass
class RunReport:
    """Per-layer figures (``rows``), warnings, and a printable table."""

    log_dir: str
    rows: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        columns = ["layer", "grad norm final", "grad norm min", "grad norm max", "update ratio",
                   "dead", "saturated", "act std"]
        keys = [None, "grad_final", "grad_min", "grad_max", "update_ratio", "dead_fraction",
                "saturation", "activation_std"]

        def cell(value):
            if value is None:
                return "-"
            if isinstance(value, float):
                return f"{value:.3g}"
            return str(value)

        table = [[row["layer"]] + [cell(row.get(k)) for k in keys[1:]] for row in self.rows]
        widths = [max(len(c), *(len(r[i]) for r in table)) if table else len(c) for i, c in enumerate(columns)]
        lines = [f"keras-bn report: {self.log_dir}",
                 "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in table]
        lines.append("warnings:" if self.warnings else "warnings: none")
        lines += [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


def _since(values: list[tuple[int, float]], above: float) -> int | None:
    """The first step from which every value stays above `above` (None if the last is not)."""
    start = None
    for step, value in values:
        if value > above:
            start = step if start is None else start
        else:
            start = None
    return start


def report(log_dir) -> RunReport:
    """Summarize one diagnostics run (see the module docstring for the thresholds)."""
    series = read_run(log_dir)
    per_layer: dict[str, dict[str, list]] = defaultdict(dict)
    for tag, values in series.items():
        quantity, _, layer = tag.partition("/")
        if quantity in PER_LAYER and layer:
            per_layer[layer][quantity] = values
    result = RunReport(str(log_dir))
    for layer in sorted(per_layer, key=_natural_key):
        q = per_layer[layer]
        row = {"layer": layer}
        if "grad_norm" in q:
            finite = [v for _, v in q["grad_norm"] if math.isfinite(v)]
            row.update(grad_final=q["grad_norm"][-1][1], grad_min=min(finite, default=None),
                       grad_max=max(finite, default=None))
        for name in ("update_ratio", "dead_fraction", "saturation", "activation_std"):
            if name in q:
                row[name] = q[name][-1][1]
        result.rows.append(row)
        if "dead_fraction" in q and row["dead_fraction"] > DEAD_FRACTION_WARN:
            since = _since(q["dead_fraction"], DEAD_FRACTION_WARN)
            result.warnings.append(f"layer {layer}: {row['dead_fraction']:.0%} dead units since step {since}")
        if "saturation" in q and row["saturation"] > SATURATION_WARN:
            result.warnings.append(f"layer {layer}: {row['saturation']:.0%} of outputs saturated: "
                                   "gradients through it vanish (check the init scale, or add BN)")
        ratio = row.get("update_ratio")
        if ratio is not None and ratio > UPDATE_RATIO_HIGH:
            result.warnings.append(f"layer {layer}: update ratio {ratio:.0e}: learning rate likely too high (guide ~1e-3)")
        elif ratio is not None and 0 < ratio < UPDATE_RATIO_LOW:
            result.warnings.append(f"layer {layer}: update ratio {ratio:.0e}: learning rate likely too low (guide ~1e-3)")
    _gradient_warnings(result, series)
    _activation_warnings(result)
    return result


def _gradient_warnings(result: RunReport, series: dict) -> None:
    grads = [r for r in result.rows if r.get("grad_final") is not None and not NORM_LAYER.search(r["layer"])]
    if any(not math.isfinite(r["grad_final"]) for r in grads):
        result.warnings.append("non-finite gradient norms: the loss diverged (lower the learning rate, clip gradients)")
    nonfinite = series.get("nonfinite/grad_steps", [])
    if any(v > 0 for _, v in nonfinite):
        result.warnings.append(f"{int(sum(v for _, v in nonfinite))} steps had NaN/Inf gradients")
    finite = [r for r in grads if math.isfinite(r["grad_final"])]
    if len(finite) >= 2 and finite[-1]["grad_final"] > 0:
        ratio = finite[0]["grad_final"] / finite[-1]["grad_final"]
        if ratio < VANISHING_RATIO:
            result.warnings.append(f"gradient norm at the first layer ({finite[0]['layer']}) {ratio:.0e} of the last "
                                   f"({finite[-1]['layer']}): vanishing gradients")
        elif ratio > EXPLODING_RATIO:
            result.warnings.append(f"gradient norm at the first layer ({finite[0]['layer']}) {ratio:.0e} of the last "
                                   f"({finite[-1]['layer']}): exploding gradients")


def _activation_warnings(result: RunReport) -> None:
    stds = [r for r in result.rows if r.get("activation_std") is not None]
    activations = [r for r in stds if "dead_fraction" in r or "saturation" in r]
    stds = activations or stds
    if len(stds) >= 2 and stds[0]["activation_std"] > 0:
        ratio = stds[-1]["activation_std"] / stds[0]["activation_std"]
        if ratio < ACTIVATION_COLLAPSE_RATIO:
            result.warnings.append(f"activation std at the last layer ({stds[-1]['layer']}) is {ratio:.2g} of the first "
                                   f"({stds[0]['layer']}): vanishing activations (init scale too small?)")
