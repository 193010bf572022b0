"""What every doctor rule shares: `Finding`, the rule table with thresholds and sources, `RunFacts`.

A rule is a pure function ``rule(series, facts) -> list[Finding]`` over a run's scalars
``{tag: [(step, value), ...]}`` (the shape `keras_bn.report.read_run` returns; validation
tags are prefixed ``validation/``) and the `RunFacts` the live Doctor records from the model
(``<log_dir>/doctor/facts.json``; empty when a run has none, and rules that need a fact then
say nothing). `keras_bn.doctor` runs them all.

Usage (inside keras-bn)::

    finding = make_finding("dead_units", layer="block3_relu", step=1200, evidence={"dead": 0.62},
                           what="dead units 62% (> 40%)")
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field

SEVERITIES = ("error", "warning", "info")
FACTS_FILE = os.path.join("doctor", "facts.json")  # beside the doctor run (text, own scalars)


@dataclass(frozen=True)
class Rule:
    """One doctor rule: its id, severity, threshold in words, where the threshold comes from,
    and the remedy (one sentence)."""

    id: str
    severity: str
    threshold: str
    source: str
    remedy: str


# --- thresholds (each with its source; docs/doctor.md shows the same table) ----------------
INITIAL_LOSS_TOLERANCE = 0.5      # |loss - ln C| <= 0.5 ln C: sanity.check_initial_loss's tolerance
DIVERGING_FACTOR = 3.0            # SEEDS §7: stop once the loss exceeds 3x the initial loss
NOT_LEARNING_STEPS = 100          # the preset's default cadence `every`: steps 1-100 vs 101-200
NOT_LEARNING_CHANGE = 0.01        # issue #19: the loss moved < 1% (SEEDS §7: "barely moving")
FLAT_TOLERANCE = 0.02             # "flat": every window within 2% of the first
FLAT_MIN_WINDOWS = 3              # ... for at least 3 logged windows
DROP_FRACTION = 0.2               # "sudden drop": then >= 20% lower within 3 windows
DROP_WINDOWS = 3
PLATEAU_PATIENCE = 10             # keras.callbacks.ReduceLROnPlateau defaults: patience=10,
PLATEAU_MIN_DELTA = 1e-4          # min_delta=1e-4 (absolute)
OVERFIT_EPOCHS = 3                # the train/validation gap grew in each of the last 3 epochs
OVERFIT_VAL_RISE = 0.05           # ... and the validation loss is 5% above its best
UNDERFIT_GAP = 0.1                # "no gap": |val - train| <= 10% of train
UNDERFIT_LOSS = 0.5               # "still high": train loss > 0.5 ln C (halfway from chance)
DEAD_FRACTION_WARN = 0.40         # SEEDS §2: a trained net has 10-20% dead units; twice the top
SATURATION_WARN = 0.30            # SEEDS §4: N(0, 0.05^2) init saturates most tanh units
UPDATE_RATIO_LOW = 1e-4           # CS231n (SEEDS §7): ||dW||/||W|| ~ 1e-3; one decade each side
UPDATE_RATIO_HIGH = 1e-2
VANISHING_RATIO = 1e-2            # SEEDS §1: the first hidden layer's gradient < 1/100 of the last
EXPLODING_RATIO = 1e2
ACTIVATION_COLLAPSE_RATIO = 0.15  # SEEDS §4: tanh with N(0, 0.01^2) init shrinks layer by layer
CLIP_BINDS_FRACTION = 0.5         # issue #19: the clip binds on most steps
CLIP_NEVER_MIN_STEPS = 100        # "never binds" needs at least this many steps watched
SPIKE_FACTOR = 10.0               # a pre-clip global norm 10x its running median
SPIKE_MIN_HISTORY = 5             # ... over at least 5 earlier logged values
SPIKE_WINDOW = 20                 # ... the median of the last 20 logged values
BN_GAP_WARN = 0.25                # stale BN: RMS train/inference output gap > 0.25 std (3x the
                                  # sampling noise sqrt(1.5/n) of a 256-sample probe, 0.077)
BN_MIN_BATCH = 16                 # Wu & He 2018 (Group Norm), Fig. 1: BN degrades below 16/replica
BN_PYTORCH_MOMENTUM = 0.5         # Keras' momentum is 1 - PyTorch's: a value <= 0.5 is PyTorch-style

_RULES = [
    Rule("nonfinite_loss", "error", "loss NaN or Inf", "SEEDS §7: NaN means the learning rate is too large",
         "lower the learning rate 10x, or clip gradients (keras_bn.optimizers.adam('global_clip'))"),
    Rule("diverging", "error", f"loss > {DIVERGING_FACTOR:g}x the initial loss",
         "SEEDS §7 / CS231n lecture 6: stop a trial once its loss exceeds 3x the start",
         "lower the learning rate 10x (keras_bn.lr_find suggests one)"),
    Rule("nonfinite_gradients", "error", "any NaN/Inf gradient (or a norm beyond float32, about 1.8e19)",
         "SEEDS §1: exploding gradients end in NaN",
         "lower the learning rate or clip gradients (keras_bn.optimizers.adam('global_clip'))"),
    Rule("initial_loss", "warning", f"|initial loss - ln C| > {INITIAL_LOSS_TOLERANCE:g} ln C",
         "SEEDS §7 / CS231n: softmax over C classes with small weights starts at ln(C)",
         "scale the last layer's initial weights down (Glorot or He init, no extra scaling of the logits)"),
    Rule("no_gradient", "error", "a hidden layer's gradient is exactly 0 on every logged step",
         "SEEDS §4: all-zero or constant weights break no symmetry",
         "initialize the weights randomly (He for ReLU, Glorot for tanh/sigmoid), never to zeros"),
    Rule("not_learning", "warning",
         f"mean loss of steps {NOT_LEARNING_STEPS + 1}-{2 * NOT_LEARNING_STEPS} within {NOT_LEARNING_CHANGE:.0%} of "
         f"steps 1-{NOT_LEARNING_STEPS}",
         "SEEDS §7: a loss barely moving means the learning rate is too small",
         "raise the learning rate 10x (keras_bn.lr_find suggests one)"),
    Rule("flat_then_drop", "warning",
         f"loss within {FLAT_TOLERANCE:.0%} for >= {FLAT_MIN_WINDOWS} windows, then >= {DROP_FRACTION:.0%} "
         f"lower within {DROP_WINDOWS}", "SEEDS §7 / CS231n: flat then sudden drop = bad initialization",
         "use Glorot (tanh/sigmoid) or He (ReLU) init, or add BatchNormalization"),
    Rule("plateau", "warning",
         f"training epoch loss not {PLATEAU_MIN_DELTA:g} better for {PLATEAU_PATIENCE} epochs",
         "SEEDS §7 (plateau: try LR decay); patience/min_delta are keras.callbacks.ReduceLROnPlateau's",
         "decay the learning rate (keras.callbacks.ReduceLROnPlateau or a schedule)"),
    Rule("overfitting", "warning",
         f"train/val gap grew for {OVERFIT_EPOCHS} epochs, val loss > {OVERFIT_VAL_RISE:.0%} above its best",
         "SEEDS §7: a growing train/validation gap = overfitting",
         "add regularization (dropout, L2) or data, or stop early at the best validation epoch"),
    Rule("underfitting", "warning",
         f"|val - train| <= {UNDERFIT_GAP:.0%} of train and train loss > {UNDERFIT_LOSS:g} ln C",
         "SEEDS §7: no gap = underfitting", "use a bigger model or train longer"),
    Rule("dead_units", "warning", f"dead fraction > {DEAD_FRACTION_WARN:.0%}",
         "SEEDS §2: a trained net often has 10-20% dead ReLU units",
         "lower the learning rate or use He init / leaky_relu"),
    Rule("saturated_units", "warning", f"saturated fraction > {SATURATION_WARN:.0%}",
         "SEEDS §4: N(0, 0.05^2) init saturates tanh units at +-1",
         "use Glorot init for tanh/sigmoid or add BatchNormalization"),
    Rule("update_ratio_high", "warning", f"median ||dW||/||W|| > {UPDATE_RATIO_HIGH:g}",
         "CS231n (SEEDS §7): the ratio should be ~1e-3; one decade above", "lower the learning rate"),
    Rule("update_ratio_low", "warning", f"median ||dW||/||W|| < {UPDATE_RATIO_LOW:g}",
         "CS231n (SEEDS §7): the ratio should be ~1e-3; one decade below", "raise the learning rate"),
    Rule("vanishing_gradients", "warning", f"first/last hidden layer gradient norm < {VANISHING_RATIO:g}",
         "SEEDS §1: gradients shrink towards the input of a deep sigmoid/tanh net",
         "use ReLU with He init, or add BatchNormalization"),
    Rule("exploding_gradients", "warning", f"first/last hidden layer gradient norm > {EXPLODING_RATIO:g}",
         "SEEDS §1: the mirror image of vanishing", "lower the learning rate, clip gradients, or add BatchNormalization"),
    Rule("collapsing_activations", "warning", f"last/first hidden activation std < {ACTIVATION_COLLAPSE_RATIO:g}",
         "SEEDS §4: N(0, 0.01^2) init in a deep tanh net shrinks activations toward 0",
         "use Glorot (tanh) or He (ReLU) init, or add BatchNormalization"),
    Rule("clip_binds_mostly", "warning", f"clip engaged on > {CLIP_BINDS_FRACTION:.0%} of steps",
         "issue #19; Pascanu et al. 2013: clipping is for rare exploding steps",
         "raise the clip threshold to about the median pre-clip norm (a clip that always binds is "
         "a constant step size in disguise)"),
    Rule("clip_never_binds", "info", f"clip never engaged in >= {CLIP_NEVER_MIN_STEPS} steps",
         "issue #19", "the clip does nothing here; lower it or drop it"),
    Rule("gradient_spike", "warning",
         f"pre-clip global norm > {SPIKE_FACTOR:g}x the median of its last {SPIKE_WINDOW} logged values",
         "SEEDS §1 / Pascanu et al. 2013: exploding gradients show as norm spikes",
         "clip by global norm near the median norm, or lower the learning rate"),
    Rule("stale_bn_statistics", "warning", f"BN train/inference output gap > {BN_GAP_WARN:g} std",
         "SEEDS §5 (train and test modes differ); keras#7265", "re-estimate the moving statistics with "
         "keras_bn.recompute_batchnorm_statistics(model, x_train) (or lower the BN momentum)"),
    Rule("bn_small_batch", "warning", f"BatchNormalization on a per-replica batch < {BN_MIN_BATCH}",
         "SEEDS §5 (small batches hurt); Wu & He 2018, Fig. 1",
         "use batches of 16 or more per replica, or GroupNormalization / LayerNormalization"),
    Rule("bn_frozen", "info", "a BN layer has trainable=False while the rest trains",
         "Keras fine-tuning guide: trainable=False runs BN in inference mode (Keras 3)",
         "intended when fine-tuning; else set layer.trainable = True"),
    Rule("bn_pytorch_momentum", "warning", f"BatchNormalization momentum <= {BN_PYTORCH_MOMENTUM:g}",
         "Keras docs: moving = moving * momentum + batch * (1 - momentum); PyTorch's 0.1 is Keras' 0.9",
         "use Keras' convention: momentum=0.99 (PyTorch 0.01) or 0.9 (PyTorch 0.1)"),
]
RULES: dict[str, Rule] = {rule.id: rule for rule in _RULES}


@dataclass(frozen=True)
class Finding:
    """One thing the doctor found: the rule, how bad, where, since when, the numbers, what to do.

    ``str(finding)`` is the one line the live Doctor prints::

        step 1200  block3_relu  dead units 62% (> 40%): lower the learning rate or use He init / leaky_relu
    """

    rule: str
    severity: str
    layer: str | None
    step: int | None
    evidence: dict
    what: str
    remedy: str
    source: str

    def __str__(self) -> str:
        where = f"  {self.layer}" if self.layer else ""
        when = f"step {self.step}" if self.step is not None else "run"
        return f"{when}{where}  {self.what}: {self.remedy}"

    @property
    def key(self) -> tuple:
        """What makes a finding new: the rule and the layer (a later step is the same finding)."""
        return (self.rule, self.layer)

    def to_dict(self) -> dict:
        return asdict(self)


def make_finding(rule: str, *, what: str, layer: str | None = None, step: int | None = None,
                 evidence: dict | None = None) -> Finding:
    """A `Finding` of `rule`, with severity, remedy and source from the rule table."""
    spec = RULES[rule]
    return Finding(rule, spec.severity, layer, None if step is None else int(step),
                   {k: float(v) for k, v in (evidence or {}).items()}, what, spec.remedy, spec.source)


def rank(findings) -> list[Finding]:
    """Errors first, then warnings, then infos; within one, rule-table order, then step, layer."""
    order = {rule: i for i, rule in enumerate(RULES)}
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), order.get(f.rule, len(order)),
                                           f.step if f.step is not None else -1, natural_key(f.layer or "")))


def natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass
class RunFacts:
    """Facts about a run that its event files do not hold, recorded by the live Doctor.

    ``loss``: ``{"kind": "categorical"|"binary"|"other", "num_classes": C}``; ``layers``:
    ``[{"name", "class", "kind", "output"}]`` in model order; ``batchnorm``: ``[{"name",
    "momentum", "trainable"}]``; ``batch_size``: the largest per-replica batch seen by BN (None:
    not measured); ``epoch_starts`` / ``epoch_ends``: the optimizer step at each epoch's start, and
    ``{epoch: its last step}``; ``trains``: the
    model has trainable weights outside BN; ``findings``: what the live Doctor found during the
    run (`Finding.to_dict`), so that `diagnose` also reports what held for a while and then
    eased (the rules read a series' last value).
    """

    loss: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    batchnorm: list = field(default_factory=list)
    batch_size: int | None = None
    epoch_starts: list = field(default_factory=list)
    epoch_ends: dict = field(default_factory=dict)
    trains: bool = True
    findings: list = field(default_factory=list)

    @property
    def num_classes(self) -> int | None:
        if self.loss.get("kind") in ("categorical", "binary"):
            return self.loss.get("num_classes")
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, log_dir, text: str | None = None) -> None:
        """Write ``facts.json`` (`text`: this object's `to_json()`, when already made)."""
        path = os.path.join(os.fspath(log_dir), FACTS_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as file:
            file.write(self.to_json() if text is None else text)
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, log_dir) -> "RunFacts":
        """The facts in `log_dir`, or empty facts when the run has none (or they are unreadable)."""
        path = os.path.join(os.fspath(log_dir), FACTS_FILE)
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return cls()


def finite(values) -> list[tuple[int, float]]:
    return [(s, v) for s, v in values if math.isfinite(v)]
