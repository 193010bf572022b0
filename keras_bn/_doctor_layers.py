"""The doctor's per-layer, clipping and BatchNormalization rules.

**Comparable layers only** (issue #15 item 7). The gradient comparison (vanishing /
exploding) and the activation comparison (collapsing) look at *hidden* layers of one kind:
never the output layer (a sigmoid or softmax head legitimately saturates, and its gradient
is not the signal that vanishes), never normalization layers (their gamma/beta gradients are
not that signal either), and only layers of the most common kind (Dense with Dense, Conv with
Conv, LSTM with LSTM; ReLU-family activations with ReLU-family ones). Kinds, order and the
output layers come from the run facts (the model itself) when the live Doctor recorded them,
else from the layer names (natural order, ``block2`` before ``block10``; a layer named
``output``, ``logits``, ``predictions``, ``head`` or ``classifier`` is the output layer).

Usage (inside keras-bn)::

    findings = [f for rule in RULES for f in rule(series, facts)]
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from keras_bn import _doctor_base as base
from keras_bn._doctor_base import make_finding, natural_key

NORM_LAYER = re.compile(r"(_bn|_ln|_gn|_syncbn|(batch|layer|group)_?normalization(_\d+)?)$")
OUTPUT_LAYER = re.compile(r"(^|[_/])(output|outputs|logits|predictions|head|classifier)$")


def name_kind(name: str) -> str:
    """A layer's kind from its name alone: norm, conv, recurrent, dense or other."""
    base_name = name.rsplit("/", 1)[-1]
    if NORM_LAYER.search(base_name):
        return "norm"
    for kind, pattern in (("conv", r"conv"), ("recurrent", r"lstm|gru|rnn"), ("dense", r"dense|linear|fc")):
        if re.search(pattern, base_name):
            return kind
    return "other"


def _layer_info(facts) -> dict:
    return {layer["name"]: layer for layer in facts.layers}


def _order(names, facts) -> list[str]:
    position = {layer["name"]: i for i, layer in enumerate(facts.layers)}
    if names and all(n in position for n in names):
        return sorted(names, key=position.__getitem__)
    return sorted(names, key=natural_key)


def _is_output(name, facts) -> bool:
    info = _layer_info(facts).get(name)
    return bool(info["output"]) if info is not None else bool(OUTPUT_LAYER.search(name))


def _kind(name, facts) -> str:
    info = _layer_info(facts).get(name)
    return info["kind"] if info is not None else name_kind(name)


def per_layer(series: dict, quantity: str) -> dict[str, list]:
    prefix = quantity + "/"
    return {tag[len(prefix):]: values for tag, values in series.items() if tag.startswith(prefix) and values}


def comparable_hidden(names, facts, kind_of) -> list[str]:
    """`names` without output and norm layers, only those of the most common kind, in order."""
    hidden = [n for n in _order(names, facts) if not _is_output(n, facts) and _kind(n, facts) != "norm"]
    if not hidden:
        return []
    counts = Counter(kind_of(n) for n in hidden)
    top = max(counts.values())
    kind = next(kind_of(n) for n in hidden if counts[kind_of(n)] == top)
    return [n for n in hidden if kind_of(n) == kind]


def _median(values) -> float:
    return float(np.median([v for _, v in values])) if values else float("nan")


def _since(values, above: float) -> int | None:
    """The first step from which every value stays above `above`."""
    start = None
    for step, value in values:
        start = (step if start is None else start) if value > above else None
    return start


def rule_gradients(series, facts):
    """non-finite gradients, no gradient, vanishing / exploding between comparable layers."""
    findings = []
    grads = per_layer(series, "grad_norm")
    steps = int(sum(v for _, v in series.get("nonfinite/grad_steps", []) if math.isfinite(v)))
    bad = sorted(n for n, values in grads.items() if any(not math.isfinite(v) for _, v in values))
    if steps or bad:
        first = min((s for n in bad for s, v in grads[n] if not math.isfinite(v)), default=None)
        findings.append(make_finding("nonfinite_gradients", step=first, evidence={"steps": steps, "layers": len(bad)},
                                     what=f"NaN/Inf gradients ({steps} steps counted; layers {', '.join(bad[:3]) or '-'})"))
    layers = comparable_hidden(list(grads), facts, lambda n: _kind(n, facts))
    for name in layers:
        values = grads[name]
        if all(v == 0.0 for _, v in values):
            findings.append(make_finding("no_gradient", layer=name, step=values[0][0], evidence={"grad_norm": 0.0},
                                         what="gradient exactly 0 on every logged step"))
    live = [n for n in layers if not all(v == 0.0 for _, v in grads[n])]
    if len(live) < 2:
        return findings
    first, last = dict(base.finite(grads[live[0]])), dict(base.finite(grads[live[-1]]))
    ratios = [(s, first[s] / last[s]) for s in sorted(set(first) & set(last)) if last[s] > 0]
    if not ratios:
        return findings
    median = _median(ratios)
    for rule, bad_ratio in (("vanishing_gradients", lambda r: r < base.VANISHING_RATIO),
                            ("exploding_gradients", lambda r: r > base.EXPLODING_RATIO)):
        if bad_ratio(median):
            step = next(s for s, r in ratios if bad_ratio(r))
            findings.append(make_finding(
                rule, layer=live[0], step=step, evidence={"ratio": median},
                what=f"gradient norm at {live[0]} is {median:.1e} of {live[-1]}'s (median over {len(ratios)} logs)"))
    return findings


def rule_units(series, facts):
    """dead units, saturated units (hidden layers), update ratio out of its band."""
    findings = []
    for name, values in sorted(per_layer(series, "dead_fraction").items()):
        if values[-1][1] > base.DEAD_FRACTION_WARN:
            findings.append(make_finding(
                "dead_units", layer=name, step=_since(values, base.DEAD_FRACTION_WARN),
                evidence={"dead_fraction": values[-1][1]},
                what=f"dead units {values[-1][1]:.0%} (> {base.DEAD_FRACTION_WARN:.0%})"))
    for name, values in sorted(per_layer(series, "saturation").items()):
        if values[-1][1] > base.SATURATION_WARN and not _is_output(name, facts):
            findings.append(make_finding(
                "saturated_units", layer=name, step=_since(values, base.SATURATION_WARN),
                evidence={"saturation": values[-1][1]},
                what=f"saturated units {values[-1][1]:.0%} (> {base.SATURATION_WARN:.0%})"))
    for name, values in sorted(per_layer(series, "update_ratio").items()):
        moving = [(s, v) for s, v in base.finite(values) if v > 0]
        if not moving:
            continue
        median = _median(moving)
        for rule, bad, bound in (("update_ratio_high", median > base.UPDATE_RATIO_HIGH, f"> {base.UPDATE_RATIO_HIGH:g}"),
                                 ("update_ratio_low", median < base.UPDATE_RATIO_LOW, f"< {base.UPDATE_RATIO_LOW:g}")):
            if bad:
                findings.append(make_finding(rule, layer=name, step=moving[0][0], evidence={"update_ratio": median},
                                             what=f"update ratio {median:.1e} ({bound}, guide ~1e-3)"))
    return findings


def _family(name, series) -> str:
    if f"dead_fraction/{name}" in series:
        return "relu"
    if f"saturation/{name}" in series:
        return "bounded"
    return "other"


def rule_activations(series, facts):
    """collapsing activations: the last comparable hidden activation's std vs the first's."""
    stds = per_layer(series, "activation_std")
    activations = [n for n in stds if _family(n, series) != "other"] or list(stds)
    layers = comparable_hidden(activations, facts, lambda n: _family(n, series))
    if len(layers) < 2:
        return []
    first, last = stds[layers[0]][-1][1], stds[layers[-1]][-1][1]
    if not (first > 0 and math.isfinite(last)) or last / first >= base.ACTIVATION_COLLAPSE_RATIO:
        return []
    return [make_finding("collapsing_activations", layer=layers[-1], step=stds[layers[-1]][-1][0],
                         evidence={"ratio": last / first},
                         what=f"activation std at {layers[-1]} is {last / first:.2g} of {layers[0]}'s")]


def rule_clipping(series, facts):
    """clip binds on most steps / never binds; pre-clip global norm spikes."""
    findings = []
    fractions = base.finite(series.get("grad_global/clip_fraction", []))
    if fractions:
        starts = [facts.epoch_starts[0]] if facts.epoch_starts else [0]
        steps = [starts[0]] + [s for s, _ in fractions]
        weights = np.maximum(np.diff(steps), 1)
        share = float(np.sum(weights * [v for _, v in fractions]) / np.sum(weights))
        if share > base.CLIP_BINDS_FRACTION:
            findings.append(make_finding("clip_binds_mostly", step=fractions[0][0], evidence={"clip_fraction": share},
                                         what=f"the clip bound on {share:.0%} of steps"))
        elif share == 0 and steps[-1] - steps[0] >= base.CLIP_NEVER_MIN_STEPS:
            findings.append(make_finding("clip_never_binds", step=steps[-1], evidence={"steps": steps[-1] - steps[0]},
                                         what=f"the clip never bound in {steps[-1] - steps[0]} steps"))
    norms = base.finite(series.get("grad_global/norm_preclip", []))
    if len(norms) > base.SPIKE_MIN_HISTORY:
        values = np.array([v for _, v in norms])
        medians = np.array([np.median(values[max(0, i - base.SPIKE_WINDOW):i])
                            for i in range(base.SPIKE_MIN_HISTORY, len(values))])
        later = values[base.SPIKE_MIN_HISTORY:]
        spikes = np.flatnonzero((medians > 0) & (later > base.SPIKE_FACTOR * medians))
        if spikes.size:
            i, median = int(spikes[0]) + base.SPIKE_MIN_HISTORY, float(medians[spikes[0]])
            findings.append(make_finding(
                "gradient_spike", step=norms[i][0], evidence={"norm": values[i], "median": median},
                what=f"pre-clip gradient norm {values[i]:.3g} = {values[i] / median:.0f}x its running median"))
    return findings


def rule_batchnorm(series, facts):
    """stale moving statistics, small per-replica batch, frozen BN, PyTorch-style momentum."""
    findings = []
    for name, values in sorted(per_layer(series, "doctor/bn_gap").items()):
        step, gap = values[-1]
        if gap > base.BN_GAP_WARN:
            findings.append(make_finding("stale_bn_statistics", layer=name, step=step, evidence={"gap": gap},
                                         what=f"train/inference output gap {gap:.2f} std (> {base.BN_GAP_WARN:g})"))
    trained = [bn for bn in facts.batchnorm if bn.get("trainable")]
    if trained and facts.batch_size is not None and facts.batch_size < base.BN_MIN_BATCH:
        findings.append(make_finding("bn_small_batch", evidence={"batch_size": facts.batch_size, "layers": len(trained)},
                                     what=f"BatchNormalization on a per-replica batch of {facts.batch_size} "
                                          f"(< {base.BN_MIN_BATCH}) in {len(trained)} layers"))
    for bn in facts.batchnorm:
        if not bn.get("trainable") and facts.trains:
            findings.append(make_finding("bn_frozen", layer=bn["name"], evidence={},
                                         what="BatchNormalization frozen (trainable=False: inference mode)"))
        if bn.get("momentum") is not None and bn["momentum"] <= base.BN_PYTORCH_MOMENTUM:
            findings.append(make_finding("bn_pytorch_momentum", layer=bn["name"], evidence={"momentum": bn["momentum"]},
                                         what=f"momentum {bn['momentum']:g} (<= {base.BN_PYTORCH_MOMENTUM:g}: "
                                              f"a PyTorch-style value)"))
    return findings


RULES = (rule_gradients, rule_units, rule_activations, rule_clipping, rule_batchnorm)
