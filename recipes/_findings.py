"""The "what this run shows" paragraph that ends every classic recipe, from its own numbers.

A recipe turns its measurements into `Finding`s (a claim, whether it held, by how much, and
where it did not, the reason as a quantity measured in the same run), and `report` prints
them. The verdict functions are pure, so a test can vary the quantity and check that the
verdict and the reason follow it.

Usage::

    lag = bn_lag(model, x_test[:256], y_test[:256], steps=62)
    report([compare("BN gives a higher test accuracy", bn_acc, plain_acc, reason=lag_reason(lag))])
"""

from __future__ import annotations

import math
import textwrap
from typing import NamedTuple

__all__ = ["Finding", "bn_lag", "compare", "lag_reason", "report"]

# Below this many steps per step of BN's moving-average memory (1 / (1 - momentum)) the
# averages still carry much of their initial (0, 1) value: 3 memories leave e^-3 ~ 5 %.
SETTLED_MEMORIES = 3.0
# A gap between inference-mode and training-mode loss on one batch above this share of the
# training-mode loss means the moving averages do not describe the batches yet.
LAG_GAP_SHARE = 0.10


class Finding(NamedTuple):
    """One claim the recipe tests: whether it held in this run, by how much, and why not."""

    claim: str
    held: bool
    by: str
    reason: str = ""

    def sentence(self) -> str:
        verdict = "held" if self.held else "did not hold"
        reason = f"; {self.reason}" if (self.reason and not self.held) else ""
        return f"{self.claim}: {verdict} ({self.by}){reason}."


def compare(claim: str, value: float, baseline: float, *, higher_is_better: bool = True, unit: str = "",
            scale: float = 1.0, reason: str = "", ties_hold: bool = False,
            words: tuple[str, str] = ("better", "worse")) -> Finding:
    """The claim "value beats baseline" ("matches or beats" with `ties_hold`), with the margin
    (`scale` 100 and unit " points" for accuracies; `words` for the margin's two signs) and
    `reason`, shown only where it did not hold."""
    if not (math.isfinite(value) and math.isfinite(baseline)):
        return Finding(claim, False, f"{value:.4g} vs {baseline:.4g}, not finite", reason)
    margin = (value - baseline) if higher_is_better else (baseline - value)
    word = words[0] if margin > 0 else words[1] if margin < 0 else "no different"
    by = f"{abs(margin) * scale:.3g}{unit} {word}: {value:.4g} vs {baseline:.4g}"
    return Finding(claim, margin > 0 or (ties_hold and margin == 0), by, reason)


def bn_lag(model, x, y, steps: int) -> dict:
    """How far a BN model's moving averages are from its batch statistics, measured on one batch.

    Returns ``train_mode_loss`` and ``inference_mode_loss`` (cross-entropy of the softmax
    output on `x`, `y` with batch statistics and with the moving averages; BN's state is
    left as it was), their ``gap``, the optimizer ``steps`` run and BN's ``memory`` in steps,
    ``1 / (1 - momentum)`` (100 at Keras' default 0.99), or NaN without a BN layer.
    """
    import keras
    import numpy as np

    from keras_bn.recipes._common import kept_state

    def loss(training):
        probs = keras.ops.convert_to_numpy(model(x, training=training))
        return float(np.mean(keras.losses.sparse_categorical_crossentropy(y, probs)))

    momenta = [layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    with kept_state(model):
        train_mode = loss(True)
    inference = loss(False)
    memory = 1.0 / (1.0 - max(momenta)) if momenta else float("nan")
    return {"train_mode_loss": train_mode, "inference_mode_loss": inference, "gap": inference - train_mode,
            "steps": int(steps), "memory": memory}


def lag_reason(lag: dict) -> str:
    """Why a BN net loses at test time, naming the measured cause: moving averages that lag
    (a large inference-minus-training loss gap, or too few steps for BN's memory), or,
    when neither is the case, that the gap is small, so the loss is not BN's inference mode."""
    steps, memory, gap = lag["steps"], lag["memory"], lag["gap"]
    share = gap / max(lag["train_mode_loss"], 1e-12)
    memories = steps / memory if memory == memory else float("inf")
    measured = (f"inference-mode loss {lag['inference_mode_loss']:.3f} vs training-mode "
                f"{lag['train_mode_loss']:.3f} on one test batch, after {steps} steps = "
                f"{memories:.2g} x BN's ~{memory:.0f}-step memory")
    if share > LAG_GAP_SHARE or memories < SETTLED_MEMORIES:
        return f"BN's moving averages lag its batch statistics ({measured})"
    return f"not BN's moving averages, which have settled ({measured})"


def report(findings: list[Finding], width: int = 100) -> str:
    """Print and return the "What this run shows" paragraph of `findings`."""
    held = sum(f.held for f in findings)
    head = f"What this run shows ({held} of {len(findings)} claims held): "
    text = textwrap.fill(head + " ".join(f.sentence() for f in findings), width=width)
    print(text)
    return text
