"""The BN paper's MNIST experiment (Ioffe & Szegedy 2015, §4.1, Figure 1).

Three fully connected hidden layers of 100 sigmoid units, small Gaussian init N(0, s^2),
mini-batches of 60, plain SGD, with and without BatchNorm (before the sigmoid), from the same
initial kernels and data order. Recorded every ``--eval-every`` steps: test accuracy
(Figure 1a) and the 15th/50th/85th percentiles of one last-hidden-layer sigmoid's input over
the first test images, in inference mode (Figure 1b without BN, 1c with BN). The input is
the Dense output without BN and the BN output with BN. The paper trains 50,000 steps.

Usage::

    keras-bn run bn_paper_mnist --quick
    python -m keras_bn.recipes.bn_paper_mnist --dataset mnist --steps 50000
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

from keras_bn import _arg_types as types
from keras_bn.recipes import _common, _findings

NAME = "bn_paper_mnist"
DESCRIPTION = "Ioffe & Szegedy's 3 x 100 sigmoid MLP with and without BN: test accuracy and a sigmoid's input percentiles."
RUNS = {"no_bn": None, "with_bn": "batch"}
HEALTHY = ("no_bn", "with_bn")  # the runs the doctor checks (issue 19): both train
FAULTS: dict = {}
PERCENTILES = (15, 50, 85)
PROBE_SAMPLES = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=types.positive_int, default=None, help="training steps (default 50000, the paper's; quick 200)")
    parser.add_argument("--eval-every", type=types.positive_int, default=None, help="steps between evaluations (default steps/50; quick steps/5)")
    parser.add_argument("--batch-size", type=types.positive_int, default=60, help="mini-batch size (default 60, the paper's)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=0.5, help="SGD learning rate (default 0.5)")
    parser.add_argument("--init-std", type=types.positive_float, default=0.1, help="std of the Gaussian init (default 0.1)")
    parser.add_argument("--unit", type=types.int_in(0, 99), default=0, help="which sigmoid of the last hidden layer to follow (default 0)")


class InputPercentiles(keras.callbacks.Callback):
    """Appends the percentiles of unit `unit` of layer `layer_name` on `probe` to `record`,
    at the start of training and after each epoch (inference mode)."""

    def __init__(self, layer_name: str, unit: int, probe: np.ndarray, record: list):
        super().__init__()
        self.layer_name, self.unit, self.probe, self.record = layer_name, unit, probe, record

    def _append(self):
        import keras_bn  # the callbacks' percentiles (nearest rank)

        values = keras.ops.convert_to_numpy(self._probe_model(self.probe, training=False))[:, self.unit]
        self.record.append([float(v) for v in keras_bn.nearest_rank_percentiles(values, PERCENTILES)])

    def on_train_begin(self, logs=None):
        self._probe_model = keras.Model(self.model.input, self.model.get_layer(self.layer_name).output)
        self._append()

    def on_epoch_end(self, epoch, logs=None):
        self._append()


def build_models(input_dim: int, num_classes: int, init_std: float) -> dict:
    """The two sigmoid MLPs, the BN one given the other's initial kernels."""
    import keras_bn

    models = {run: keras_bn.build_dense((input_dim,), [100] * 3, num_classes, activation="sigmoid", norm=norm,
                                        initializer=init_std, name=run) for run, norm in RUNS.items()}
    for layer in models["with_bn"].layers:
        if layer.name.endswith("_dense") or layer.name == "logits":
            layer.kernel.assign(models["no_bn"].get_layer(layer.name).kernel)
    return models


def run(args: argparse.Namespace) -> dict:
    data = _common.load_data(args, flatten=True)
    steps = args.steps or (200 if args.quick else 50000)
    eval_every = args.eval_every or max(1, steps // (5 if args.quick else 50))  # each: a test pass + epoch-end logs
    models = build_models(data.x_train.shape[1], data.num_classes, args.init_std)
    probe = data.x_test[:PROBE_SAMPLES]
    print(f"training 3 x 100 sigmoid MLPs, SGD lr {args.learning_rate}, batch {args.batch_size}, "
          f"{steps} steps on {len(data.x_train)} images")
    results = {}
    for run, model in models.items():
        model.compile(optimizer=keras.optimizers.SGD(args.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        layer = "block3_bn" if RUNS[run] else "block3_dense"
        percentiles: list = []
        # quick mode: the activation probe (TensorBoard's Figure 1 percentiles) on the BN run only
        stats_probe = probe[:256] if RUNS[run] or not args.quick else None
        callbacks = [InputPercentiles(layer, args.unit, probe, percentiles),
                     *_common.training_callbacks(_common.run_dir(args, NAME, run), probe=stats_probe,
                                                 fit_steps=min(eval_every, steps))]
        history = _common.train_for_steps(model, data, steps=steps, batch_size=args.batch_size,
                                          eval_every=eval_every, seed=args.seed, callbacks=callbacks, label=run)
        history["percentiles"] = percentiles  # one entry at step 0, then one per evaluation
        if RUNS[run]:
            history["lag"] = _findings.bn_lag(model, probe[:256], data.y_test[:256], len(history["loss"]) * eval_every)
        results[run] = history

    checkpoints = sorted({i for i in (0, 1, 4, 9, 19, 49) if i < len(results["no_bn"]["step"])}
                         | {len(results["no_bn"]["step"]) - 1})
    columns = ["step"] + [f"{run} test acc" for run in RUNS] + [
        f"{run} p{p}" for run in RUNS for p in PERCENTILES]
    rows = [[results["no_bn"]["step"][i]] + [results[r]["test_accuracy"][i] for r in RUNS]
            + [results[r]["percentiles"][i + 1][j] for r in RUNS for j in range(len(PERCENTILES))]
            for i in checkpoints]
    print(_common.format_table(columns, rows))
    _plot(results, _common.recipe_dir(args, NAME) / f"{NAME}.png", data.name, args.unit)
    findings = explain(results)
    _findings.report(findings)
    return {"steps": steps, "dataset": data.name, "runs": results, "findings": findings}


def median_drift(history: dict) -> float:
    """How far the followed sigmoid's median input moved from step 0 to the last evaluation."""
    return abs(history["percentiles"][-1][1] - history["percentiles"][0][1])


def explain(results: dict) -> list:
    """The paper's Figure 1 claims on this run's numbers: BN keeps the sigmoid's input
    distribution steadier (b vs c), and trains to a higher test accuracy (a)."""
    plain, bn = results["no_bn"], results["with_bn"]
    drift_plain, drift_bn = median_drift(plain), median_drift(bn)
    return [
        _findings.compare("with BN the sigmoid's median input drifts less", drift_bn, drift_plain,
                          higher_is_better=False,
                          reason=f"the run is short ({plain['step'][-1] if plain['step'] else 0} steps) for the "
                                 "plain net's inputs to move"),
        _findings.compare("BN reaches the higher final test accuracy", bn["test_accuracy"][-1],
                          plain["test_accuracy"][-1], scale=100, unit=" points",
                          reason=_findings.lag_reason(bn["lag"])),
    ]


def _plot(results: dict, path, dataset: str, unit: int):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[2].sharey(axes[1])  # (b) and (c) on one scale, so their drifts compare at a glance
    for run, h in results.items():
        axes[0].plot(h["step"], h["test_accuracy"], label=run)
    axes[0].set(title=f"(a) test accuracy ({dataset})", xlabel="step")
    axes[0].legend()
    for ax, run, title in ((axes[1], "no_bn", "(b) without BN"), (axes[2], "with_bn", "(c) with BN")):
        h = results[run]
        steps = [0] + h["step"][: len(h["percentiles"]) - 1]
        values = np.array(h["percentiles"])
        for j, p in enumerate(PERCENTILES):
            ax.plot(steps, values[:, j], color="C0", lw=2 if p == 50 else 1, label=f"{p}th percentile")
        ax.set(title=f"{title}: input of last-layer sigmoid {unit}", xlabel="step")
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    _common.save_figure(fig, path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
