"""Activation functions compared in a deep MLP (SEEDS §1-§2), each with and without BatchNorm.

For sigmoid, tanh, relu, leaky_relu, prelu, elu, selu, gelu and maxout, a ``--depth``-layer
MLP (initializer "auto": Glorot for sigmoid/tanh, He for the ReLU family, LeCun normal for
SELU) with and without BN, trained with Adam from the same data order. Measured: the
per-layer kernel gradient norm on one batch at step 0 and after training (the ratio
first hidden layer / last hidden layer: far below 1 means the gradient vanishes towards the
input), the dead-unit (ReLU family) and saturated (sigmoid/tanh) fractions of the hidden
layers after training, test accuracy after the budget, and seconds per epoch (median, with
the test evaluation).

Usage::

    keras-bn run activation_comparison --quick
    python -m keras_bn.recipes.activation_comparison --activations sigmoid relu --depth 10
"""

from __future__ import annotations

import argparse

import numpy as np

from keras_bn import _arg_types as types
from keras_bn.recipes import _common, _findings

NAME = "activation_comparison"
DESCRIPTION = "A deep MLP with each activation (sigmoid ... maxout), with and without BN: gradients, dead/saturated units, accuracy."
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "maxout")
QUICK_ACTIVATIONS = ("sigmoid", "relu")
NORMS = {"no_bn": None, "bn": "batch"}
# The runs the doctor checks (issue 19). The claims need no diagnostics (the recipe measures its
# own gradients and units), so quick mode logs only these two: the BN nets' instrumented steps
# cost the most to trace (about 3x the plain ones on 2 cores).
HEALTHY = ("relu_no_bn",)
FAULTS = {"sigmoid_no_bn": ("vanishing_gradients",)}  # SEEDS §1: the sigmoid's 1/4 slope compounds
GRAD_BATCH = 256
PROBE_SAMPLES = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activations", nargs="+", default=None, choices=ACTIVATIONS, metavar="NAME",
                        help=f"activations to compare (default all: {' '.join(ACTIVATIONS)}; "
                             f"quick: {' '.join(QUICK_ACTIVATIONS)})")
    parser.add_argument("--depth", type=types.positive_int, default=8, help="hidden layers (default 8)")
    parser.add_argument("--units", type=types.positive_int, default=None, help="hidden width (default 128; quick 32)")
    parser.add_argument("--batch-size", type=types.positive_int, default=64, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")


def gradient_ratio(norms: dict, depth: int) -> float:
    """First hidden kernel's gradient norm over the last hidden kernel's."""
    return norms["block1_dense"] / norms[f"block{depth}_dense"]


def hidden_stats(model, activation, x) -> dict:
    """Dead and saturated fractions averaged over the hidden layers, on `x`."""
    from keras_bn.activations import activation_family

    names = _common.activation_layer_names(model, activation)
    outputs = _common.layer_outputs(model, names, x)
    stats = [_common.activation_stats(outputs[n], activation_family(model.get_layer(n))) for n in names]
    return {key: float(np.mean([s[key] for s in stats])) for key in ("dead", "saturated")}


def run_one(args, data, activation: str, norm_key: str, units: int, epochs: int, twins: dict) -> dict:
    """Build, measure at step 0, train and measure again one (activation, norm) pair.

    In quick mode the runs of one norm that differ only in an elementwise activation train on
    one traced model (`_common.twin_model` with `ActivationSwitch` layers, kept in `twins`):
    the same numbers; the measurements are taken on the built model, given the trained weights."""
    import keras_bn

    run = f"{activation}_{norm_key}"
    diagnosed = not args.quick or run in HEALTHY or run in FAULTS
    model = keras_bn.build_dense((data.x_train.shape[1],), [units] * args.depth, data.num_classes,
                                 activation=activation, norm=NORMS[norm_key], name=run)
    trained = _trained_model(args, model, activation, norm_key, twins)
    grad_x, grad_y = data.x_train[:GRAD_BATCH], data.y_train[:GRAD_BATCH]
    norms_start = _common.kernel_gradient_norms(model, grad_x, grad_y)
    timer = _common.EpochTimer()
    steps_per_epoch = len(data.x_train) // args.batch_size
    callbacks = [timer]
    if diagnosed:  # quick mode: no probe (the vanishing gradient needs none; the recipe measures the units)
        callbacks += _common.training_callbacks(_common.run_dir(args, NAME, run),
                                                probe=None if args.quick else data.x_test[:256],
                                                fit_steps=steps_per_epoch)
    history = _common.train_for_steps(trained, data, steps=epochs * steps_per_epoch, batch_size=args.batch_size,
                                      eval_every=steps_per_epoch, seed=args.seed, callbacks=callbacks, label=run)
    if trained is not model:
        _common.copy_weights(trained, model)
    norms_end = _common.kernel_gradient_norms(model, grad_x, grad_y)
    hidden = [f"block{i}_dense" for i in range(1, args.depth + 1)]
    lag = (_findings.bn_lag(model, data.x_test[:256], data.y_test[:256], len(history["loss"]) * steps_per_epoch)
           if NORMS[norm_key] else None)
    return {
        "lag": lag,
        "grad_norms_start": [norms_start[n] for n in hidden],
        "grad_ratio_start": gradient_ratio(norms_start, args.depth),
        "grad_ratio_end": gradient_ratio(norms_end, args.depth),
        **hidden_stats(model, activation, data.x_test[:PROBE_SAMPLES]),
        "test_accuracy": history["test_accuracy"][-1],
        "seconds_per_epoch": float(np.median(timer.seconds)),
        "history": history,
    }


SWITCHABLE = ("sigmoid", "tanh", "relu", "elu", "selu", "gelu")  # one keras.layers.Activation, no weights


def _trained_model(args, model, activation: str, norm_key: str, twins: dict):
    """The compiled model that trains `model`: `model` itself, or in quick mode the `twins`
    model of its norm (built from the first such run), loaded with `model`'s weights."""
    import keras

    def compile_(m):
        m.compile(optimizer=keras.optimizers.Adam(args.learning_rate),  # traced: eager costs 1.5x more at depth 8
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    choices = [a for a in (args.activations or QUICK_ACTIVATIONS) if a in SWITCHABLE]
    if not (args.quick and activation in choices and len(choices) > 1):
        return compile_(model)
    if norm_key not in twins:
        names = set(_common.activation_layer_names(model, activation))
        twins[norm_key] = compile_(_common.twin_model(model, lambda layer: _common.ActivationSwitch(
            choices, name=layer.name) if layer.name in names else None))
    return _common.load_twin(twins[norm_key], model, activation)


def run(args: argparse.Namespace) -> dict:
    data = _common.load_data(args, flatten=True)
    units = args.units or (32 if args.quick else 128)
    epochs = args.epochs or (1 if args.quick else 3)
    activations = args.activations or (QUICK_ACTIVATIONS if args.quick else ACTIVATIONS)
    print(f"training {args.depth} x {units} MLPs, {len(activations)} activations x {len(NORMS)}, "
          f"Adam lr {args.learning_rate}, {epochs} epoch(s) on {len(data.x_train)} images")
    twins = {}
    results = {(act, norm): run_one(args, data, act, norm, units, epochs, twins)
               for act in activations for norm in NORMS}
    columns = ["activation", "norm", "grad 1st/last (step 0)", "grad 1st/last (end)", "dead units",
               "saturated", "test acc", "s/epoch"]
    rows = [[act, norm, r["grad_ratio_start"], r["grad_ratio_end"], _common.dash_nan(r["dead"]),
             _common.dash_nan(r["saturated"]), r["test_accuracy"], r["seconds_per_epoch"]]
            for (act, norm), r in results.items()]
    print(_common.format_table(columns, rows))
    if args.quick:
        print(f"(quick mode: the diagnostics ran on {', '.join(HEALTHY + tuple(FAULTS))} only, so s/epoch "
              "does not compare across runs)")
    _plot(results, args.depth, _common.recipe_dir(args, NAME) / f"{NAME}.png", data.name)
    runs = {f"{act}_{norm}": r for (act, norm), r in results.items()}
    findings = explain(runs, activations)
    _findings.report(findings)
    return {"epochs": epochs, "units": units, "dataset": data.name, "runs": runs, "findings": findings}


VANISHED = 0.01  # first / last hidden kernel gradient norm below this: vanished (SEEDS §1)


def explain(runs: dict, activations) -> list:
    """This recipe's claims on its own numbers: without BN a deep sigmoid net's gradient
    vanishes towards the input, with BN it does not; BN raises each activation's test
    accuracy (where not, BN's measured lag says why)."""
    findings = []
    if "sigmoid" in activations:
        ratio = runs["sigmoid_no_bn"]["grad_ratio_start"]
        findings.append(_findings.Finding(
            "without BN the deep sigmoid net's gradient vanishes towards the input", ratio < VANISHED,
            f"first/last hidden gradient norm {ratio:.2g} at step 0, threshold {VANISHED:g}",
            "the net is not deep enough for the sigmoid's 1/4 slope to compound"))
        ratio_bn = runs["sigmoid_bn"]["grad_ratio_start"]
        findings.append(_findings.Finding(
            "BN keeps it from vanishing", ratio_bn >= VANISHED, f"ratio {ratio_bn:.2g} with BN",
            "BN's rescaling does not undo the sigmoid's slope here"))
    for act in activations:
        bn, plain = runs[f"{act}_bn"], runs[f"{act}_no_bn"]
        findings.append(_findings.compare(f"BN raises {act}'s test accuracy", bn["test_accuracy"],
                                          plain["test_accuracy"], scale=100, unit=" points",
                                          reason=_findings.lag_reason(bn["lag"])))
    return findings


def accuracy_axis(values) -> tuple[float, float]:
    """A y range that shows 1-point differences between accuracies: the values' span plus a
    margin (at least 5 points), clipped to [0, 1]; (0, 1) when nothing is finite."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    margin = max(0.05, 0.25 * (high - low))
    return max(0.0, low - margin), min(1.0, high + margin)


def _plot(results: dict, depth: int, path, dataset: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    layers = range(1, depth + 1)
    activations = list(dict.fromkeys(act for act, _ in results))
    for i, act in enumerate(activations):
        for ax, norm in zip(axes[:2], NORMS):
            ax.plot(layers, results[(act, norm)]["grad_norms_start"], marker="o", color=f"C{i}", label=act)
    for ax, norm in zip(axes[:2], NORMS):
        ax.set(title=f"kernel gradient norm at step 0, {norm}", xlabel="hidden layer", yscale="log")
        ax.legend(fontsize=7)
    x = np.arange(len(activations))
    accuracies = [results[(a, n)]["test_accuracy"] for a in activations for n in NORMS]
    for j, norm in enumerate(NORMS):
        values = [results[(a, norm)]["test_accuracy"] for a in activations]
        bars = axes[2].bar(x + 0.4 * j - 0.2, values, 0.4, label=norm)
        axes[2].bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, padding=1)
    axes[2].set_xticks(x, activations, rotation=45, fontsize=8)
    axes[2].set(title=f"test accuracy after the budget ({dataset})", ylim=accuracy_axis(accuracies))
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    _common.save_figure(fig, path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
