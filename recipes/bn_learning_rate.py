"""BatchNorm and the learning rate (SEEDS §5): does BN tolerate higher rates and train faster?

The MLP (``--mlp-units``, ReLU) and the small CNN (``--cnn-filters``, ReLU, 2x2 max pooling,
global average pooling) with and without BN, each trained with SGD + momentum 0.9 for
``--steps`` steps at every learning rate of a log grid, from the same seed and data order.
Measured: final test accuracy, diverged or not (a non-finite loss, or a final accuracy
below 0.2, i.e. about chance for 10 classes), and the steps to reach ``--target`` test
accuracy (evaluated every ``--eval-every`` steps on the first ``--eval-samples`` test
images). Then, for each model, the ratio steps(no BN) / steps(BN) at each variant's best
learning rate (the one reaching the target in the fewest steps). The paper reports 14x on
Inception.

Usage::

    keras-bn run bn_learning_rate --quick
    python -m keras_bn.recipes.bn_learning_rate --models mlp --learning-rates 0.01 0.1 1
"""

from __future__ import annotations

import argparse

import numpy as np

from keras_bn import _arg_types as types
from keras_bn.recipes import _common, _findings

NAME = "bn_learning_rate"
DESCRIPTION = "MLP and small CNN with and without BN over a log grid of SGD learning rates: accuracy, divergence, steps to target."
NORMS = {"no_bn": None, "bn": "batch"}
MODELS = ("mlp", "cnn")
DIVERGED_ACCURACY = 0.2
FULL_GRID = tuple(float(f"{v:.3g}") for v in 10.0 ** np.arange(-3.0, 0.75, 0.5))  # 0.001 ... 3.16
QUICK_GRID = (0.1, 1.0)
# The runs the doctor checks (issue 19), named as in quick mode and in the full grid.
HEALTHY = ("mlp_no_bn_lr0.1", "mlp_bn_lr0.1", "mlp_bn_lr1")
FAULTS = {"mlp_no_bn_lr1": ("nonfinite_loss", "diverging")}  # SGD at lr 1 without BN: the loss blows up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=None, choices=MODELS, help="mlp, cnn or both (default both; quick mlp)")
    parser.add_argument("--learning-rates", type=types.positive_float, nargs="+", default=None,
                        help=f"SGD learning rates (default {' '.join(map(str, FULL_GRID))}; quick {' '.join(map(str, QUICK_GRID))})")
    parser.add_argument("--steps", type=types.positive_int, default=None, help="training steps per run (default 1500; quick 60)")
    parser.add_argument("--eval-every", type=types.positive_int, default=None, help="steps between evaluations (default 50; quick 20)")
    parser.add_argument("--eval-samples", type=types.positive_int, default=2000, help="test images per evaluation (default 2000)")
    parser.add_argument("--target", type=types.fraction, default=None, help="target test accuracy (default 0.8; quick 0.6)")
    parser.add_argument("--batch-size", type=types.positive_int, default=64, help="batch size (default 64)")
    parser.add_argument("--mlp-units", type=types.positive_int, nargs="+", default=[100, 100, 100], help="MLP widths (default 100 100 100)")
    parser.add_argument("--cnn-filters", type=types.positive_int, nargs="+", default=[16, 32], help="CNN filters (default 16 32)")


def build_model(kind: str, norm, data, args):
    """The MLP or the small CNN (``keras_bn.build_dense`` / ``build_conv``) with `norm`."""
    import keras_bn

    if kind == "mlp":
        return keras_bn.build_dense(data.x_train.shape[1:], args.mlp_units, data.num_classes, norm=norm)
    return keras_bn.build_conv(data.x_train.shape[1:], args.cnn_filters, data.num_classes, norm=norm)


def steps_to_target(history: dict, target: float) -> int | None:
    """The first evaluated step whose test accuracy reaches `target`, or None."""
    return next((s for s, a in zip(history["step"], history["test_accuracy"]) if a >= target), None)


def best_run(runs: dict) -> tuple[float, dict]:
    """(learning rate, result) reaching the target in the fewest steps; else the most accurate."""
    def key(item):
        result = item[1]
        steps = result["steps_to_target"]
        return (steps is None, steps or 0, -np.nan_to_num(result["test_accuracy"], nan=0.0))
    return min(runs.items(), key=key)


def run(args: argparse.Namespace) -> dict:
    import keras

    steps = args.steps or (60 if args.quick else 1500)
    args.models = args.models or (["mlp"] if args.quick else list(MODELS))
    eval_every = args.eval_every or (20 if args.quick else 50)
    target = args.target or (0.6 if args.quick else 0.8)
    grid = args.learning_rates or (QUICK_GRID if args.quick else FULL_GRID)
    datasets = {}
    for kind in args.models:
        data = _common.load_data(args, flatten=kind == "mlp")
        datasets[kind] = data._replace(x_test=data.x_test[: args.eval_samples], y_test=data.y_test[: args.eval_samples])
    print(f"SGD (momentum 0.9) at learning rates {', '.join(map(str, grid))}; {steps} steps of {args.batch_size}; "
          f"target test accuracy {target}")
    results = {}
    for kind, data in datasets.items():
        for norm_key, norm in NORMS.items():
            _common.set_seed(args.seed)
            model = build_model(kind, norm, data, args)
            model.compile(optimizer=keras.optimizers.SGD(grid[0], momentum=0.9),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            start = _common.initial_state(model)
            for lr in grid:
                _common.restart(model, start, learning_rate=lr)  # same initial weights at every rate, one trace
                run_name = f"{kind}_{norm_key}_lr{lr:g}"
                callbacks = _common.training_callbacks(_common.run_dir(args, NAME, run_name),
                                                       probe=_common.full_mode_probe(args, data),
                                                       fit_steps=min(eval_every, steps))
                history = _common.train_for_steps(model, data, steps=steps, batch_size=args.batch_size,
                                                  eval_every=eval_every, seed=args.seed, callbacks=callbacks,
                                                  label=run_name)
                accuracy = history["test_accuracy"][-1]
                results[(kind, norm_key, lr)] = {
                    "test_accuracy": accuracy,
                    "diverged": history["diverged"] or not accuracy >= DIVERGED_ACCURACY,
                    "steps_to_target": steps_to_target(history, target),
                    "history": history,
                    "lag": (_findings.bn_lag(model, data.x_test[:256], data.y_test[:256], len(history["loss"]) * eval_every)
                            if norm and not history["diverged"] else None),
                }

    columns = ["model", "norm", "learning rate", "final test acc", "diverged", f"steps to {target}"]
    rows = [[kind, norm_key, lr, r["test_accuracy"], "yes" if r["diverged"] else "no",
             r["steps_to_target"] if r["steps_to_target"] is not None else f"> {steps}"]
            for (kind, norm_key, lr), r in results.items()]
    print(_common.format_table(columns, rows))
    speedups = {}
    summary = []
    for kind in datasets:
        best = {n: best_run({lr: r for (k, nk, lr), r in results.items() if k == kind and nk == n}) for n in NORMS}
        (lr_plain, plain), (lr_bn, with_bn) = best["no_bn"], best["bn"]
        ratio = (plain["steps_to_target"] / with_bn["steps_to_target"]
                 if plain["steps_to_target"] and with_bn["steps_to_target"] else None)
        speedups[kind] = ratio
        summary.append([kind, lr_plain, plain["steps_to_target"] or f"> {steps}", lr_bn,
                        with_bn["steps_to_target"] or f"> {steps}",
                        f"{ratio:.2f}x" if ratio else "n/a (target not reached)"])
    print(_common.format_table(["model", "best lr no BN", "steps no BN", "best lr BN", "steps BN",
                                "steps no BN / steps BN"], summary))
    _plot(results, grid, datasets, _common.recipe_dir(args, NAME) / f"{NAME}.png", target)
    findings = explain(results, list(datasets), grid, target, steps)
    _findings.report(findings)
    return {"steps": steps, "target": target, "grid": list(grid), "speedup": speedups, "findings": findings,
            "runs": {f"{k}_{n}_lr{lr:g}": r for (k, n, lr), r in results.items()}}


def explain(results: dict, kinds, grid, target: float, steps: int) -> list:
    """This recipe's claims on its own numbers, per model: BN trains at a learning rate where
    the plain net diverges, and BN reaches `target` in fewer steps at its best rate."""
    findings = []
    for kind in kinds:
        def highest(norm_key):
            ok = [lr for lr in grid if not results[(kind, norm_key, lr)]["diverged"]]
            return max(ok) if ok else float("nan")

        plain_top, bn_top = highest("no_bn"), highest("bn")
        findings.append(_findings.Finding(
            f"{kind}: BN trains at a higher learning rate than no BN", bn_top > plain_top
            or (plain_top != plain_top and bn_top == bn_top),
            f"highest rate that did not diverge: {bn_top:g} with BN, {plain_top:g} without",
            f"the grid's top rate {max(grid):g} is not high enough to make the plain net diverge"
            if plain_top == max(grid) else "BN diverged as early as the plain net"))
        best = {n: best_run({lr: r for (k, nk, lr), r in results.items() if k == kind and nk == n}) for n in NORMS}
        (lr_plain, plain), (lr_bn, with_bn) = best["no_bn"], best["bn"]
        plain_steps, bn_steps = plain["steps_to_target"], with_bn["steps_to_target"]
        lag = with_bn["lag"]
        reason = _findings.lag_reason(lag) if lag else "BN diverged at its best rate"
        if bn_steps is None:
            held, by = False, f"BN did not reach {target} in {steps} steps (best test accuracy {with_bn['test_accuracy']:.3f})"
        elif plain_steps is None:
            held, by = True, f"BN at lr {lr_bn:g} in {bn_steps} steps; no BN not within {steps}"
        else:
            held, by = bn_steps < plain_steps, f"{plain_steps / bn_steps:.2f}x: {bn_steps} vs {plain_steps} steps"
        findings.append(_findings.Finding(f"{kind}: BN reaches test accuracy {target} in fewer steps", held, by, reason))
    return findings


def _plot(results: dict, grid, datasets: dict, path, target: float):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, kind in enumerate(datasets):
        for norm_key, style in zip(NORMS, ("--", "-")):
            runs = [results[(kind, norm_key, lr)] for lr in grid]
            accuracy = [0.0 if r["diverged"] else r["test_accuracy"] for r in runs]
            axes[0].plot(grid, accuracy, style, marker="o", color=f"C{i}", label=f"{kind} {norm_key}")
            reached = [(lr, results[(kind, norm_key, lr)]["steps_to_target"]) for lr in grid]
            reached = [(lr, s) for lr, s in reached if s is not None]
            if reached:
                axes[1].plot(*zip(*reached), style, marker="o", color=f"C{i}", label=f"{kind} {norm_key}")
    axes[0].set(title=f"final test accuracy ({next(iter(datasets.values())).name}; diverged = 0)",
                xlabel="learning rate", xscale="log", ylim=(0, 1))
    axes[1].set(title=f"steps to {target} test accuracy", xlabel="learning rate", xscale="log")
    _common.finish_figure(fig, axes, path, legend_fontsize=8)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
