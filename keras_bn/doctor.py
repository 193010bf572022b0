"""The training doctor: one rule set that reads a run and says what is wrong and what to do.

`diagnose(log_dir)` reads a diagnostics run's event files (and the facts the live
`keras_bn.callbacks.Doctor` recorded beside them) and returns ranked `Finding`s;
``keras-bn report LOGDIR`` prints them; the live Doctor evaluates the same rules during
`fit`. Rules are pure functions over the run's series ``{tag: [(step, value), ...]}``
(`evaluate`); their thresholds and sources are in `RULES` and in docs/doctor.md.

Usage::

    for finding in keras_bn.doctor.diagnose("logs/run1"):
        print(finding)   # step 1200  block3_relu  dead units 62% (> 40%): lower the learning rate ...
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from keras_bn import _doctor_layers, _doctor_loss
from keras_bn._doctor_base import RULES, SEVERITIES, Finding, Rule, RunFacts, rank
from keras_bn._doctor_loss import expected_initial_loss, initial_loss_verdict, step_losses

ALL_RULES = _doctor_loss.RULES + _doctor_layers.RULES

__all__ = [
    "Finding",
    "RULES",
    "Rule",
    "RunFacts",
    "diagnose",
    "evaluate",
    "evaluate_run",
    "expected_initial_loss",
    "format_findings",
    "initial_loss_verdict",
    "markdown_report",
    "model_facts",
    "read_series",
    "step_losses",
]


def evaluate(series: dict, facts: RunFacts | None = None) -> list[Finding]:
    """Every rule on `series` (train tags; validation tags prefixed ``validation/``), ranked."""
    facts = facts if facts is not None else RunFacts()
    return rank(f for rule in ALL_RULES for f in rule(series, facts))


def evaluate_run(series: dict, facts: RunFacts) -> list[Finding]:
    """`evaluate` on a whole run, plus the findings the live Doctor recorded in `facts` that no
    longer hold at the run's end (the rules read a series' last value), ranked."""
    found = {f.key: f for f in evaluate(series, facts)}
    for recorded in facts.findings:
        try:
            finding = Finding(**recorded)
        except TypeError:  # facts written by another keras-bn version: not this one's findings
            continue
        found.setdefault(finding.key, finding)
    return rank(found.values())


def read_series(log_dir, train: dict | None = None) -> dict:
    """The scalars of `log_dir`'s train run (`train`, when already read), its validation run
    (tags prefixed ``validation/``) and the live Doctor's own run (``doctor/*`` tags)."""
    from keras_bn.report import read_run

    series = dict(read_run(log_dir) if train is None else train)
    for run, prefix in (("validation", "validation/"), ("doctor", "")):
        folder = Path(log_dir) / run
        if folder.is_dir() and any(folder.glob("events.out.tfevents.*")):
            series.update({f"{prefix}{tag}": values for tag, values in read_run(folder).items()})
    return series


def diagnose(log_dir) -> list[Finding]:
    """The findings of the run in `log_dir` (the folder given to `diagnostics`), ranked: the
    rules on the whole run, plus what the live Doctor found earlier and no longer holds at the
    end (a collapse at step 10 that eased by step 30), so that both front ends agree.

    Raises FileNotFoundError when `log_dir` holds no event files.

    Usage: ``errors = [f for f in diagnose("logs/run1") if f.severity == "error"]``
    """
    return evaluate_run(read_series(log_dir), RunFacts.load(log_dir))


def format_findings(findings, max_per_severity: int = 10) -> str:
    """Findings grouped by severity, then rule; at most `max_per_severity` lines of each
    severity, the rest summarized ("... and 27 more warnings")."""
    findings = rank(findings)
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    head = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n) or "no findings"
    lines = [f"doctor: {head}"]
    for severity in SEVERITIES:
        chosen = [f for f in findings if f.severity == severity]
        if not chosen:
            continue
        lines.append(f"{severity}s:" if len(chosen) != 1 else f"{severity}:")
        by_rule = defaultdict(list)
        for finding in chosen:
            by_rule[finding.rule].append(finding)
        shown = 0
        for rule, group in by_rule.items():
            if shown >= max_per_severity:
                break
            if len(group) > 1:
                lines.append(f"  {rule} ({len(group)} layers):")
            for finding in group[: max_per_severity - shown]:
                lines.append(("    " if len(group) > 1 else "  ") + str(finding))
                shown += 1
        if len(chosen) > shown:
            rest = len(chosen) - shown
            lines.append(f"  ... and {rest} more {severity}{'s' if rest != 1 else ''}")
    return "\n".join(lines)


def markdown_report(findings, *, title: str = "keras-bn doctor", step: int | None = None) -> str:
    """All findings as a Markdown page (what the live Doctor writes to ``<log_dir>/report.md``)."""
    findings = rank(findings)
    lines = [f"# {title}", ""]
    if step is not None:
        lines += [f"Up to optimizer step {step}.", ""]
    if not findings:
        return "\n".join(lines + ["No findings.", ""])
    lines += ["| severity | rule | layer | step | finding | remedy | threshold source |",
              "|---|---|---|---|---|---|---|"]
    for f in findings:
        cells = [f.severity, f.rule, f.layer or "", "" if f.step is None else str(f.step), f.what, f.remedy, f.source]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines + [""])


# --- facts from a live model ------------------------------------------------------------------
def _layer_kind(layer) -> str:
    import keras

    name = type(layer).__name__
    if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                          keras.layers.GroupNormalization, keras.layers.UnitNormalization)):
        return "norm"
    if "Conv" in name:
        return "conv"
    if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)) or name in ("LSTM", "GRU", "SimpleRNN"):
        return "recurrent"
    if name in ("Dense", "EinsumDense", "DenseBlock"):
        return "dense"
    return "other"


def _loss_facts(model, num_outputs: int | None) -> dict:
    loss = getattr(model, "loss", None)
    if loss is None or isinstance(loss, (list, tuple, dict)):
        return {"kind": "other"}
    try:
        kind = _doctor_loss.loss_kind(loss)
    except ValueError:  # a name Keras does not know
        kind = None
    if kind in ("sparse", "categorical"):
        return {"kind": "categorical", "num_classes": num_outputs}
    if kind == "binary" and num_outputs == 1:
        return {"kind": "binary", "num_classes": 2}
    return {"kind": "other"}


def model_facts(model, probe=None) -> RunFacts:
    """The `RunFacts` of a compiled model: loss kind and classes, layer kinds and order, the
    output layers, BatchNormalization momentum and trainability.

    Usage: ``keras_bn.doctor.model_facts(model).save("logs/run1")``
    """
    import keras

    from keras_bn.callbacks._layers import iter_layers

    outputs = list(getattr(model, "outputs", None) or [])
    width = None
    if len(outputs) == 1 and outputs[0].shape[-1] is not None:
        width = int(outputs[0].shape[-1])
    elif not outputs and probe is not None:
        try:
            width = int(keras.ops.shape(model(keras.tree.map_structure(lambda a: a[:2], probe), training=False))[-1])
        except Exception:  # noqa: BLE001  a model we cannot call on the probe: no class count
            width = None
    layers, batchnorm = [], []
    for path, layer in iter_layers(model):
        is_output = False
        for tensor in outputs:
            try:
                is_output = is_output or layer.output is tensor
            except (AttributeError, ValueError, RuntimeError):
                pass
        layers.append({"name": path, "class": type(layer).__name__, "kind": _layer_kind(layer), "output": is_output})
    for path, layer in iter_layers(model, parts=True):  # BN inside blocks and user layers too
        if isinstance(layer, keras.layers.BatchNormalization):
            batchnorm.append({"name": path, "momentum": float(layer.momentum), "trainable": bool(layer.trainable)})
    # The head: the last weighted layer, when no weighted layer is an output (a subclassed model,
    # or a Dense "logits" layer followed by a weightless softmax / Rescaling): it is not hidden.
    weighted = [(info, layer) for info, (_, layer) in zip(layers, iter_layers(model))
                if layer.weights and info["kind"] != "norm"]
    if weighted and not any(info["output"] for info, _ in weighted):
        weighted[-1][0]["output"] = True
        if width is None and isinstance(getattr(weighted[-1][1], "units", None), int):
            width = weighted[-1][1].units
    bn_ids = {id(v) for _, layer in iter_layers(model, parts=True) if isinstance(layer, keras.layers.BatchNormalization)
              for v in layer.trainable_variables}
    trains = any(id(v) not in bn_ids for v in model.trainable_variables)
    return RunFacts(loss=_loss_facts(model, width), layers=layers, batchnorm=batchnorm, trains=trains)
