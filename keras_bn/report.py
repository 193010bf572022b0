"""Read a diagnostics run back from its event files and say what looks wrong.

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
=======
`read_run(log_dir)` loads every scalar of a run (``<log_dir>/train`` or the folder itself) with
keras-bn's streaming reader (`keras_bn.events`);
`report(log_dir)` turns it into a per-layer table and the doctor's findings
(`keras_bn.doctor`: the rules, their thresholds and sources are in `keras_bn.doctor.RULES`
and docs/doctor.md). ``keras-bn report LOGDIR`` prints it: findings ranked (errors, then
warnings, then infos), grouped by rule, capped per severity with a summary line ("... and 27
more warnings"), and exits 1 when a finding at the ``--fail-on`` level exists.

Layers are ordered by a natural sort of their names (``block2`` before ``block10``), which
matches the builders' names and Keras' default ``dense``, ``dense_1``, ... names.

Usage::

    print(keras_bn.report.report("logs/init_study/tanh_std0.01"))
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from keras_bn._doctor_base import SEVERITIES, Finding, natural_key as _natural_key

__all__ = ["PER_LAYER", "RunReport", "exit_code", "read_run", "report"]

PER_LAYER = ("grad_norm", "update_ratio", "dead_fraction", "saturation", "activation_std")


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
    """Per-layer figures (``rows``), the doctor's `findings`, and a printable table."""

    log_dir: str
    rows: list[dict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    max_per_severity: int = 10
    kind: str = "keras-bn diagnostics run"  # `keras_bn.events` KIND_*: what wrote the run
    problems: list = field(default_factory=list)  # unreadable records (file:offset), interleaved runs

    @property
    def warnings(self) -> list[str]:
        """Every finding as its one printed line (errors, warnings and infos)."""
        return [str(f) for f in self.findings]

    def __str__(self) -> str:
        from keras_bn.doctor import format_findings

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
        from keras_bn import events

        lines = [f"keras-bn report: {self.log_dir}"]
        if self.kind != events.KIND_DIAGNOSTICS:
            lines.append(f"not a keras-bn diagnostics run ({self.kind}): only its loss and metric curves "
                         f"are read; per-layer figures need keras_bn.callbacks.diagnostics")
        lines += [f"could not read: {problem}" for problem in self.problems]
        lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in table]
        lines.append(format_findings(self.findings, self.max_per_severity))
        return "\n".join(lines)


def report(log_dir, max_per_severity: int = 10) -> RunReport:
    """The per-layer table and the doctor's findings of one diagnostics run.

    Usage: ``print(report("logs/run1"))``
    """
    from keras_bn import doctor, events

    details = events.read_run_details(log_dir)  # read once: the doctor's series come from it
    series = doctor.read_series(log_dir, train={tag: values.pairs() for tag, values in details.scalars.items()})
    per_layer: dict[str, dict[str, list]] = defaultdict(dict)
    for tag, values in series.items():
        quantity, _, layer = tag.partition("/")
        if quantity in PER_LAYER and layer and values:
            per_layer[layer][quantity] = values
    result = RunReport(str(log_dir), max_per_severity=max_per_severity, kind=details.kind,
                       problems=list(details.problems))
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
    result.findings = doctor.evaluate_run(series, doctor.RunFacts.load(log_dir))
    return result


def exit_code(findings, fail_on: str = "error") -> int:
    """1 when a finding at `fail_on` severity or worse exists (``"never"``: always 0), else 0."""
    if fail_on == "never":
        return 0
    worst = SEVERITIES.index(fail_on)
    return int(any(SEVERITIES.index(f.severity) <= worst for f in findings))
