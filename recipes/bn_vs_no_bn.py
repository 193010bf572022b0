"""BN vs no BN: the reference experiment of SEEDS §5, trained side by side.

The 784-32-32-10 MLP, Dense -> BN -> ReLU twice then Dense(10), against the same network
without BN: the same initial kernels, optimizer and data order; per-epoch train loss and test
accuracy of both, seconds per epoch, a PNG of the curves and a TensorBoard run for each.

Usage::

    keras-bn run bn_vs_no_bn --quick
    python -m keras_bn.recipes.bn_vs_no_bn --epochs 5 --data-dir ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse

import numpy as np

from keras_bn import _arg_types as types
from keras_bn.recipes import _common, _findings

NAME = "bn_vs_no_bn"
DESCRIPTION = "The 784-32-32-10 MLP with and without BatchNorm, same init and data order, side by side."
RUNS = {"no_bn": None, "with_bn": "batch"}
# The runs the doctor checks (issue 19): both are meant to train (in quick mode BN's moving
# averages are still stale after 64 steps: a warning, which the recipe's lag measurement explains).
HEALTHY = ("no_bn", "with_bn")
FAULTS: dict = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=types.positive_int, default=64, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--units", type=types.positive_int, nargs="+", default=[32, 32], help="hidden widths (default 32 32)")


def build_models(input_dim: int, units: list[int], num_classes: int) -> dict:
    """The two MLPs, the BN one given the no-BN one's initial kernels."""
    import keras_bn

    models = {run: keras_bn.build_dense((input_dim,), units, num_classes, norm=norm, name=run)
              for run, norm in RUNS.items()}
    reference = models["no_bn"]
    for layer in models["with_bn"].layers:
        if layer.name.endswith("_dense") or layer.name == "logits":
            layer.kernel.assign(reference.get_layer(layer.name).kernel)
    return models


def run(args: argparse.Namespace) -> dict:
    import keras

    data = _common.load_data(args, flatten=True)
    epochs = args.epochs or (2 if args.quick else 5)
    models = build_models(data.x_train.shape[1], args.units, data.num_classes)
    history = {run: {"loss": [], "test_accuracy": [], "seconds": []} for run in RUNS}
    callbacks, timers = {}, {}
    for run, model in models.items():
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        _common.ready_to_fit(model, data.x_train[:args.batch_size], data.y_train[:args.batch_size])
        # quick mode: the activation probe on the BN run only (the doctor's BN-gap check reads it)
        probe = data.x_test[:256] if RUNS[run] else _common.full_mode_probe(args, data)
        timers[run] = _common.EpochTimer()
        callbacks[run] = [_common.EagerValidation(data.x_test, data.y_test, batch_size=args.batch_size), timers[run],
                          *_common.training_callbacks(_common.run_dir(args, NAME, run), probe=probe,
                                                      fit_steps=-(-len(data.x_train) // args.batch_size))]

    rng = np.random.default_rng(args.seed)
    print(f"training {', '.join(RUNS)} for {epochs} epochs on {len(data.x_train)} images")
    for epoch in range(epochs):
        order = rng.permutation(len(data.x_train))  # one data order shared by both models
        for run, model in models.items():
            fit = model.fit(data.x_train[order], data.y_train[order], batch_size=args.batch_size,
                            epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0, callbacks=callbacks[run])
            history[run]["loss"].append(float(fit.history["loss"][-1]))
            history[run]["test_accuracy"].append(float(fit.history["val_accuracy"][-1]))
            history[run]["seconds"].append(timers[run].seconds[-1])
        print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(
            f"{run} loss {history[run]['loss'][-1]:.4f} acc {history[run]['test_accuracy'][-1]:.4f}" for run in RUNS))

    columns = ["epoch"] + [f"{run} {q}" for q in ("train loss", "test acc") for run in RUNS]
    rows = [[e + 1] + [history[r][k][e] for k in ("loss", "test_accuracy") for r in RUNS] for e in range(epochs)]
    print(_common.format_table(columns, rows))
    summary = [[run, history[run]["test_accuracy"][-1], float(np.median(history[run]["seconds"]))] for run in RUNS]
    print(_common.format_table(["model", "final test acc", "s/epoch (median)"], summary))
    _plot(history, _common.recipe_dir(args, NAME) / f"{NAME}.png", data.name)
    steps = epochs * -(-len(data.x_train) // args.batch_size)
    lag = _findings.bn_lag(models["with_bn"], data.x_test[:256], data.y_test[:256], steps)
    findings = explain(history, lag)
    _findings.report(findings)
    return {"epochs": epochs, "dataset": data.name, "history": history, "lag": lag, "findings": findings}


def explain(history: dict, lag: dict) -> list:
    """The claims of this recipe, tested on its final epoch: BN lowers the training loss and
    raises the test accuracy; where it does not, `lag` (see `_findings.bn_lag`) says why."""
    bn, plain = history["with_bn"], history["no_bn"]
    reason = _findings.lag_reason(lag)
    return [
        _findings.compare("BN lowers the final training loss", bn["loss"][-1], plain["loss"][-1],
                          higher_is_better=False, reason=f"after {lag['steps']} steps"),
        _findings.compare("BN raises the final test accuracy", bn["test_accuracy"][-1], plain["test_accuracy"][-1],
                          scale=100, unit=" points", reason=reason),
    ]


def _plot(history: dict, path, dataset: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for run, curves in history.items():
        epochs = range(1, len(curves["loss"]) + 1)
        axes[0].plot(epochs, curves["loss"], marker="o", label=run)
        axes[1].plot(epochs, curves["test_accuracy"], marker="o", label=run)
    axes[0].set(title=f"train loss ({dataset})", xlabel="epoch")
    axes[1].set(title="test accuracy", xlabel="epoch")
    _common.finish_figure(fig, axes, path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
