"""Gradient clipping on the temporal order task (Pascanu, Mikolov & Bengio 2013, §4.1).

The task (Hochreiter & Schmidhuber 1997, exp. 6a): a sequence of `length` one-hot symbols,
all distractors (c, d, e, f) except two, each A or B, placed at a random step in
[0.1, 0.2) x length and in [0.5, 0.6) x length; the class (AA, AB, BA, BB) is read from the
last hidden state, so the gradient must carry the first symbol across about 0.8 x length
steps. The paper's setting: a SimpleRNN of 50 tanh units, every weight N(0, 0.1^2), plain SGD
at lr 0.01, batch 20 of fresh sequences each step, clipping threshold 1.0. Each of
`--seeds` seeds trains three ways from the same initial weights and data stream: no clipping,
per-variable ``clipnorm`` and ``global_clipnorm`` (the paper's). A run succeeds when it makes
fewer than 1% errors on `--test-size` fresh sequences (checked every `--eval-every` steps).

Reported per variant: success rate, steps to success, the mean final test error, the clip
engagement fraction (the diagnostics' ``grad_global/clip_fraction``, over the whole run) and
the distribution of the global gradient norm before clipping (sampled every `--every` steps:
median, 99th percentile, max, and the share of samples above 10x the run's median: the
spikes clipping cuts).

Quick mode (``--quick``: T=10, one seed, 60 steps, one success check at the end) cannot wait
thousands of steps for the paper's slow explosions, so it raises the learning rate to 0.5
(50x the paper's): there the gradient explodes within those 60 steps, the unclipped run
diverges (the doctor's ``diverging`` error) and the ``global_clipnorm`` run trains to success.
Declared runs (issue 19) are those of the quick mode's setting: `HEALTHY` and `FAULTS`.

Usage::

    keras-bn run rnn_clipping --quick
    python -m keras_bn.recipes.rnn_clipping --length 25 --seeds 5 --max-steps 4000   # full mode (the defaults)
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from keras_bn import _arg_types as types
from keras_bn.recipes import _common

NAME = "rnn_clipping"
DESCRIPTION = "Temporal order task (Pascanu et al. 2013): SimpleRNN, SGD, no clipping vs clipnorm vs global_clipnorm."
VARIANTS = {"none": {}, "clipnorm": {"clipnorm": 1.0}, "global_clipnorm": {"global_clipnorm": 1.0}}
SYMBOLS = 6  # A, B, then the distractors c, d, e, f
SPIKE_FACTOR = 10.0
SUCCESS_ERROR = 0.01
QUICK = {"length": 10, "seeds": 1, "max_steps": 60, "eval_every": 60, "test_size": 200, "learning_rate": 0.5}
# runs of the quick mode's setting (seed 0): global clipping trains; no clipping explodes and diverges
HEALTHY = ("global_clipnorm_seed0",)
FAULTS = {"none_seed0": ("diverging", "nonfinite_loss", "nonfinite_gradients", "gradient_spike")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=types.positive_int, default=25, help="sequence length T (default 25, from the pilot in docs/RESULTS.md)")
    parser.add_argument("--seeds", type=types.positive_int, default=5, help="seeds per variant (default 5)")
    parser.add_argument("--max-steps", type=types.positive_int, default=4000, help="SGD steps per run at most (default 4000)")
    parser.add_argument("--eval-every", type=types.positive_int, default=250, help="steps between success checks (default 250)")
    parser.add_argument("--every", type=types.positive_int, default=10, help="diagnostics cadence in steps (default 10)")
    parser.add_argument("--test-size", type=types.positive_int, default=1000, help="fresh test sequences (default 1000)")
    parser.add_argument("--batch-size", type=types.positive_int, default=20, help="batch size (default 20)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--clip", type=types.positive_float, default=1.0, help="clipping threshold (default 1.0)")
    parser.add_argument("--units", type=types.positive_int, default=50, help="tanh units (default 50)")
    parser.add_argument("--init-std", type=types.positive_float, default=0.1, help="std of every initial weight (default 0.1)")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS),
                        help="which runs (default all three; the pilot uses --variants none)")


def apply_quick(args: argparse.Namespace) -> None:
    """Set the `QUICK` values on `args`, except where the user gave a value other than the default."""
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    for name, value in QUICK.items():
        if getattr(args, name) == defaults.get_default(name):
            setattr(args, name, value)


def temporal_order(count: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` sequences ``(count, length, 6)`` one-hot float32 and their classes 0..3."""
    symbols = rng.integers(2, SYMBOLS, size=(count, length))
    first = rng.integers(length // 10, max(length // 10 + 1, 2 * length // 10), size=count)
    second = rng.integers(5 * length // 10, max(5 * length // 10 + 1, 6 * length // 10), size=count)
    a, b = rng.integers(0, 2, size=count), rng.integers(0, 2, size=count)
    rows = np.arange(count)
    symbols[rows, first], symbols[rows, second] = a, b
    return np.eye(SYMBOLS, dtype="float32")[symbols], (2 * a + b).astype("int32")


def build_model(args):
    import keras_bn

    model = keras_bn.build_recurrent((args.length, SYMBOLS), args.units, 4, cell="simple",
                                     initializer=args.init_std, recurrent_initializer=args.init_std, unroll=True)
    logits = model.get_layer("logits")
    logits.kernel.assign(keras.random.normal(logits.kernel.shape, stddev=args.init_std))
    return model


class SuccessCheck(keras.callbacks.Callback):
    """The error rate on the test set at each epoch end; stops training below 1% (or at NaN)."""

    def __init__(self, x, y, eval_every: int):
        super().__init__()
        self.x, self.y, self.eval_every = x, y, eval_every
        self.errors, self.success_step = [], None

    def on_epoch_end(self, epoch, logs=None):
        predicted = np.argmax(self.model.predict(self.x, batch_size=500, verbose=0), axis=-1)
        error = float(np.mean(predicted != self.y))
        self.errors.append(error)
        if error < SUCCESS_ERROR:
            self.success_step = (epoch + 1) * self.eval_every
            self.model.stop_training = True
        elif not np.isfinite((logs or {}).get("loss", 0.0)):
            self.model.stop_training = True


def _stream(args, seed: int):
    """Fresh training batches forever (one generator per seed: every variant sees the same)."""
    import tensorflow as tf

    def batches():
        rng = np.random.default_rng(10_000 + seed)
        while True:
            yield temporal_order(args.batch_size, args.length, rng)

    signature = (tf.TensorSpec((args.batch_size, args.length, SYMBOLS), tf.float32),
                 tf.TensorSpec((args.batch_size,), tf.int32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature)


def train_one(args, variant: str, seed: int, initial_weights, test) -> dict:
    _common.set_seed(seed)
    model = build_model(args)
    model.set_weights(initial_weights)
    clip = {k: args.clip for k in VARIANTS[variant]}
    model.compile(keras.optimizers.SGD(args.learning_rate, **clip), "sparse_categorical_crossentropy")
    callbacks = _common.training_callbacks(_common.run_dir(args, NAME, f"{variant}_seed{seed}"), every=args.every)
    samples = {"norm": [], "clip": []}  # (step, value) of the logged global pre-clip norm and clip fraction
    norm_tag = "grad_global/norm_preclip" if clip else "grad_global/norm"

    def listen(run, step, scalars):
        if norm_tag in scalars:
            samples["norm"].append((step, scalars[norm_tag]))
        if "grad_global/clip_fraction" in scalars:
            samples["clip"].append((step, scalars["grad_global/clip_fraction"]))

    callbacks[0].writers.add_listener(listen)
    check = SuccessCheck(*test, args.eval_every)
    start = time.perf_counter()
    model.fit(_stream(args, seed), steps_per_epoch=args.eval_every, epochs=args.max_steps // args.eval_every,
              verbose=0, shuffle=False, callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks, check])
    steps = int(model.optimizer.iterations.numpy())
    return {"variant": variant, "seed": seed, "success": check.success_step is not None,
            "success_step": check.success_step, "steps": steps, "final_error": check.errors[-1] if check.errors else 1.0,
            "clip_fraction": _engagement(samples["clip"]) if clip else 0.0,
            "norms": np.array([v for _, v in samples["norm"]]), "seconds": time.perf_counter() - start}


def _engagement(fractions: list) -> float:
    """Share of all steps that clipped, from the per-window fractions the diagnostics log."""
    previous, clipped, total = 0, 0.0, 0
    for step, fraction in sorted(fractions):
        if step > previous:
            clipped += fraction * (step - previous)
            total += step - previous
            previous = step
    return clipped / total if total else float("nan")


def spike_summary(norms: np.ndarray) -> dict:
    """Median, 99th percentile, max, and the share of samples above 10x the median."""
    finite = norms[np.isfinite(norms)]
    if not len(finite):
        return {"median": float("nan"), "p99": float("nan"), "max": float("nan"), "spikes": float("nan")}
    median = float(np.median(finite))
    return {"median": median, "p99": float(np.percentile(finite, 99)), "max": float(finite.max()),
            "spikes": float(np.mean(finite > SPIKE_FACTOR * median))}


def run(args: argparse.Namespace) -> dict:
    if args.quick:
        apply_quick(args)
    rng = np.random.default_rng(args.seed)
    test = temporal_order(args.test_size, args.length, rng)
    print(f"temporal order, T={args.length}: {args.seeds} seeds x {', '.join(args.variants)}, "
          f"at most {args.max_steps} steps of batch {args.batch_size}, SGD lr {args.learning_rate}, clip {args.clip}")
    results = []
    for seed in range(args.seed, args.seed + args.seeds):
        _common.set_seed(seed)
        initial = build_model(args).get_weights()  # the same start for every variant of this seed
        for variant in args.variants:
            result = train_one(args, variant, seed, initial, test)
            results.append(result)
            print(f"  seed {seed} {variant}: {'success at step ' + str(result['success_step']) if result['success'] else 'no success'}"
                  f" ({result['steps']} steps, error {result['final_error']:.3f}, clipped {result['clip_fraction']:.1%},"
                  f" {result['seconds']:.0f} s)")
    summary = summarize(results, args.variants)
    print(_common.format_table(
        ["variant", "success", "median steps to success", "mean final error", "clip engaged", "norm median", "norm p99",
         "norm max", "spikes >10x"],
        [[v, f"{s['successes']}/{s['runs']}", _common.dash_nan(s["median_steps"]), s["mean_error"], f"{s['clip_fraction']:.1%}",
          s["median"], s["p99"], s["max"], f"{s['spikes']:.2%}"] for v, s in summary.items()]))
    _plot(results, args, _common.recipe_dir(args, NAME) / f"{NAME}.png")
    return {"length": args.length, "results": results, "summary": summary}


def summarize(results: list, variants) -> dict:
    """Per variant: successes, median steps to success, mean clip fraction, pooled norm spikes."""
    summary = {}
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant]
        steps = [r["success_step"] for r in runs if r["success"]]
        pooled = np.concatenate([r["norms"] for r in runs]) if runs else np.array([])
        summary[variant] = {"runs": len(runs), "successes": len(steps),
                            "median_steps": float(np.median(steps)) if steps else float("nan"),
                            "mean_error": float(np.mean([r["final_error"] for r in runs])),
                            "clip_fraction": float(np.mean([r["clip_fraction"] for r in runs])),
                            **spike_summary(pooled)}
    return summary


def _plot(results: list, args, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    pooled = [np.concatenate([r["norms"] for r in results if r["variant"] == v]) for v in args.variants]
    finite = np.concatenate(pooled)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if len(finite):
        bins = np.logspace(np.log10(finite.min()), np.log10(finite.max()) + 1e-9, 40)
        for variant, norms in zip(args.variants, pooled):
            ax.hist(norms[np.isfinite(norms) & (norms > 0)], bins=bins, histtype="step", label=variant)
        ax.set_xscale("log")
    ax.axvline(args.clip, color="gray", linestyle=":", label=f"threshold {args.clip:g}")
    ax.set(title=f"global gradient norm before clipping, T={args.length}", xlabel="norm", ylabel="samples")
    _common.finish_figure(fig, [ax], path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
