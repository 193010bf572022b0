"""The doctor's loss rules (SEEDS §7): initial loss, diverging, not learning, flat then drop,
plateau, overfitting, underfitting; and `step_losses`, the per-window loss behind them.

**Per-step loss from running means.** ``batch_loss`` is Keras' running mean of the loss
over the epoch so far, written every `every` steps (and at the epoch's end). With the
epoch's first step ``s0`` and two logs ``(s1, m1)``, ``(s2, m2)`` of one epoch, the mean
loss of the steps ``s1+1 .. s2`` is ``((s2-s0) m2 - (s1-s0) m1) / (s2 - s1)`` (exact when
the batches are of equal size; a smaller last batch weighs a little less in Keras' mean).
The epoch ends come from the run facts the live Doctor records; without them, an epoch's
end is the step whose ``batch_loss`` equals that epoch's train or validation ``epoch_loss``
(the callbacks write the same mean to both); failing that, the running means are used as
they are.

Usage (inside keras-bn)::

    windows = step_losses(series, facts)   # [(step, mean loss of the window ending there)]
"""

from __future__ import annotations

import bisect
import math

from keras_bn import _doctor_base as base
from keras_bn._doctor_base import make_finding


_CROSS_ENTROPY = {"SparseCategoricalCrossentropy": "sparse", "sparse_categorical_crossentropy": "sparse",
                  "CategoricalCrossentropy": "categorical", "categorical_crossentropy": "categorical",
                  "BinaryCrossentropy": "binary", "binary_crossentropy": "binary"}


def loss_name(loss) -> str:
    """The class or function name of a Keras loss (a name, a function or a ``keras.losses.Loss``)."""
    import keras

    loss = keras.losses.get(loss) if isinstance(loss, str) else loss
    if type(loss).__name__ == "LossFunctionWrapper":  # a function passed to compile
        return getattr(getattr(loss, "fn", None), "__name__", "LossFunctionWrapper")
    return type(loss).__name__ if isinstance(loss, keras.losses.Loss) else getattr(loss, "__name__", repr(loss))


def loss_kind(loss) -> str | None:
    """``"sparse"``, ``"categorical"`` or ``"binary"`` for a cross-entropy loss; None for any
    other (regression losses, focal losses, custom ones)."""
    return _CROSS_ENTROPY.get(loss_name(loss))


def expected_initial_loss(loss, num_classes: int | None) -> tuple[float, str] | None:
    """``(value, formula)`` an untrained classifier's mean `loss` should start near, or None where
    no such value exists (regression losses: MSE, MAE, Huber, ...).

    Cross-entropy over C classes starts at ``ln(C)`` when the predictions are near uniform (also
    with label smoothing: the cross-entropy of any target with the uniform distribution is
    ln(C)); binary cross-entropy at ``ln(2)`` per output. `loss` is a name, a function or a
    ``keras.losses.Loss``; from_logits does not change the value. The one definition behind
    `keras_bn.sanity.check_initial_loss` and the doctor's ``initial_loss`` rule.

    Usage: ``expected_initial_loss(keras.losses.SparseCategoricalCrossentropy(from_logits=True), 10)``
    """
    from keras_bn._validation import check_positive_int

    kind = loss_kind(loss)
    if kind == "binary":
        return math.log(2.0), "ln(2)"
    if kind is None:
        return None
    num_classes = check_positive_int("num_classes", num_classes if num_classes is not None else 0)
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2 for a softmax. Received: num_classes={num_classes}")
    return math.log(num_classes), "ln(C)"


def initial_loss_verdict(loss: float, num_classes: int, tolerance: float = base.INITIAL_LOSS_TOLERANCE):
    """``(passed, expected)``: whether a classifier's initial loss is within `tolerance` x ln(C)
    of ``ln(num_classes)`` (SEEDS §7; ``num_classes=2`` for binary cross-entropy). Shared by
    the doctor's rule and `keras_bn.sanity.check_initial_loss`.

    Usage: ``passed, expected = initial_loss_verdict(2.9, 10)``  # (True, 2.302...)
    """
    expected = math.log(num_classes)
    return bool(math.isfinite(loss) and abs(loss - expected) <= tolerance * expected), expected


def _epoch_ends(series: dict, facts) -> dict[int, float] | None:
    """``{last step of an epoch: that epoch's train loss}``, from the facts or by matching."""
    train = series.get("epoch_loss", [])
    if facts.epoch_ends:
        ends = {int(e): int(s) for e, s in facts.epoch_ends.items()}
        return {ends[e]: v for e, v in train if e in ends}
    batch, val = series.get("batch_loss", []), dict(series.get("validation/epoch_loss", []))
    found, i = {}, 0
    for epoch, value in train:
        candidates = [val[epoch]] if epoch in val else [value]  # with validation, Keras' metrics hold it
        while i < len(batch) and not any(math.isclose(batch[i][1], c, rel_tol=1e-6, abs_tol=1e-9)
                                         for c in candidates):
            i += 1
        if i == len(batch):
            return None
        found[batch[i][0]] = value
        i += 1
    return found


def step_losses(series: dict, facts) -> list[tuple[int, float]]:
    """The mean train loss of each logged window, ``[(last step of the window, mean)]``.

    At an epoch's last step Keras' metrics already hold the validation loss when there is
    validation data (``fit`` evaluates before ``on_epoch_end``), so the ``batch_loss`` written
    there is replaced by the epoch's train ``epoch_loss``.
    """
    ends = _epoch_ends(series, facts)
    if ends is None:
        return list(series.get("batch_loss", []))
    batch = dict(series.get("batch_loss", []))
    batch.update(ends)
    starts = sorted({0, *ends, *(int(s) for s in facts.epoch_starts)})
    windows, previous = [], None  # previous: (epoch start, step, running mean)
    for step, mean in sorted(batch.items()):
        start = starts[max(bisect.bisect_left(starts, step) - 1, 0)]
        if previous is not None and previous[0] == start and step > previous[1]:
            k1, k2 = previous[1] - start, step - start
            value = (k2 * mean - k1 * previous[2]) / (k2 - k1) if math.isfinite(mean) else mean
        else:
            value = mean
        windows.append((step, value))
        previous = (start, step, mean)
    return windows


def initial_loss(series: dict) -> tuple[int, float] | None:
    """The loss of the first step (``doctor/initial_loss``, or a ``batch_loss`` at step 1)."""
    for tag in ("doctor/initial_loss", "batch_loss"):
        values = series.get(tag, [])
        if values and values[0][0] <= 1:
            return values[0]
    return None


def rule_initial_loss(series, facts):
    first, classes = initial_loss(series), facts.num_classes
    if first is None or not classes or classes < 2 or not math.isfinite(first[1]):
        return []
    passed, expected = initial_loss_verdict(first[1], classes)
    if passed:
        return []
    return [make_finding("initial_loss", step=first[0], evidence={"loss": first[1], "ln_c": expected},
                         what=f"initial loss {first[1]:.3g} vs ln({classes}) = {expected:.3g} "
                              f"(> {base.INITIAL_LOSS_TOLERANCE:.0%} off)")]


def rule_diverging(series, facts):
    windows = step_losses(series, facts)
    for tag in ("batch_loss", "epoch_loss", "validation/epoch_loss"):
        bad = next(((s, v) for s, v in series.get(tag, []) if not math.isfinite(v)), None)
        if bad is not None:
            return [make_finding("nonfinite_loss", step=bad[0] if tag == "batch_loss" else None,
                                 evidence={"loss": bad[1]}, what=f"{tag} turned {bad[1]}")]
    first = initial_loss(series) or (windows[0] if windows else None)
    if first is None or first[1] <= 0:
        return []
    limit = base.DIVERGING_FACTOR * first[1]
    above = next(((s, v) for s, v in windows if s > first[0] and v > limit), None)
    if above is None:
        return []
    return [make_finding("diverging", step=above[0], evidence={"loss": above[1], "initial": first[1]},
                         what=f"loss {above[1]:.3g} > {base.DIVERGING_FACTOR:g}x the initial {first[1]:.3g}")]


def _flat_then_drop(windows):
    if len(windows) < base.FLAT_MIN_WINDOWS + 1:
        return None
    first = windows[0][1]
    if not first > 0:
        return None
    flat = 0
    while flat < len(windows) and abs(windows[flat][1] - first) <= base.FLAT_TOLERANCE * first:
        flat += 1
    if flat < base.FLAT_MIN_WINDOWS:
        return None
    for step, value in windows[flat:flat + base.DROP_WINDOWS]:
        if value <= (1 - base.DROP_FRACTION) * first:
            return windows[flat - 1][0], step, first, value
    return None


def rule_learning(series, facts):
    """not learning / flat then sudden drop, from the per-window losses."""
    windows = [w for w in step_losses(series, facts) if math.isfinite(w[1])]
    found = _flat_then_drop(windows)
    if found is not None:
        flat_until, step, first, value = found
        return [make_finding("flat_then_drop", step=step,
                             evidence={"flat_until": flat_until, "loss_before": first, "loss_after": value},
                             what=f"loss flat at {first:.3g} until step {flat_until}, then {value:.3g}")]
    if not windows:
        return []
    start = windows[0][0] - _length(windows, 0)
    n = base.NOT_LEARNING_STEPS
    spans = [_span_mean(windows, start + i * n, start + (i + 1) * n) for i in (0, 1)]
    if windows[-1][0] < start + 2 * n or None in spans or not spans[0] > 0:
        return []
    change = abs(spans[1] - spans[0]) / spans[0]
    if change >= base.NOT_LEARNING_CHANGE:
        return []
    step = next(s for s, _ in windows if s >= start + 2 * n)
    return [make_finding("not_learning", step=step, evidence={"first": spans[0], "next": spans[1], "change": change},
                         what=f"mean loss {spans[0]:.4g} over steps {start + 1}-{start + n}, {spans[1]:.4g} over "
                              f"the next {n}: moved {change:.2%} (< {base.NOT_LEARNING_CHANGE:.0%})")]


def _length(windows, i) -> int:
    """Steps in window `i` (the first window: as long as the second, at most its end step)."""
    if i > 0:
        return windows[i][0] - windows[i - 1][0]
    return min(windows[0][0], windows[1][0] - windows[0][0]) if len(windows) > 1 else windows[0][0]


def _span_mean(windows, low, high):
    """The step-weighted mean loss of the windows ending in ``(low, high]``."""
    chosen = [(windows[i][1], _length(windows, i)) for i in range(len(windows)) if low < windows[i][0] <= high]
    total = sum(w for _, w in chosen)
    return sum(v * w for v, w in chosen) / total if total > 0 else None


def rule_plateau(series, facts):
    losses = [v for _, v in series.get("epoch_loss", [])]
    patience = base.PLATEAU_PATIENCE
    if len(losses) <= patience or not all(math.isfinite(v) for v in losses):
        return []
    best_before = min(losses[:-patience])
    if min(losses[-patience:]) < best_before - base.PLATEAU_MIN_DELTA:
        return []
    epoch = series["epoch_loss"][-patience - 1][0]
    return [make_finding("plateau", evidence={"best": best_before, "epochs": patience, "since_epoch": epoch},
                         what=f"training loss no better than {best_before:.4g} for {patience} epochs "
                              f"(since epoch {epoch})")]


def _epoch_pairs(series):
    train = dict(series.get("epoch_loss", []))
    val = dict(series.get("validation/epoch_loss", []))
    return [(e, train[e], val[e]) for e in sorted(set(train) & set(val))
            if math.isfinite(train[e]) and math.isfinite(val[e])]


def rule_fit(series, facts):
    """overfitting and underfitting, from the epoch losses of the train and validation runs."""
    pairs = _epoch_pairs(series)
    findings = []
    n = base.OVERFIT_EPOCHS
    if len(pairs) > n:
        gaps = [v - t for _, t, v in pairs]
        best = min(v for _, _, v in pairs)
        last_epoch, _, last_val = pairs[-1]
        growing = all(gaps[-i] > gaps[-i - 1] for i in range(1, n + 1))
        if growing and last_val > (1 + base.OVERFIT_VAL_RISE) * best:
            findings.append(make_finding(
                "overfitting", evidence={"gap": gaps[-1], "val_loss": last_val, "best_val_loss": best},
                what=f"validation loss {last_val:.3g} vs best {best:.3g}, train/val gap {gaps[-1]:.3g} "
                     f"growing for {n} epochs (epoch {last_epoch})"))
    classes = facts.num_classes
    if len(pairs) >= 2 and classes and classes >= 2:
        epoch, train, val = pairs[-1]
        high = base.UNDERFIT_LOSS * math.log(classes)
        if abs(val - train) <= base.UNDERFIT_GAP * train and train > high:
            findings.append(make_finding(
                "underfitting", evidence={"train_loss": train, "val_loss": val, "high": high},
                what=f"train loss {train:.3g} > {high:.3g} ({base.UNDERFIT_LOSS:g} ln {classes}) with no "
                     f"train/val gap (epoch {epoch})"))
    return findings


RULES = (rule_initial_loss, rule_diverging, rule_learning, rule_plateau, rule_fit)
