"""Weight initialization study (SEEDS §4): the lecture's per-layer activation statistics.

Part 1, statistics: 6 hidden layers of 4096 units, no normalization, fed standard-normal
inputs. tanh with N(0, 0.01^2) (activations shrink to 0), N(0, 0.05^2) (units saturate at
+-1) and Glorot (stable), and ReLU with Glorot (decays) vs He (stable): per-layer mean, std,
saturated fraction (tanh, |a| > 0.97) or dead-unit fraction (ReLU), and a histogram grid
(rows = configs, columns = layers). Each config then takes one SGD step on random labels
with the diagnostics callbacks on, so ``logs/init_study/<config>/`` holds a TensorBoard run
of the lecture setting that ``keras-bn report`` reads (it warns for N(0, 0.01^2)).

Part 2, training: the same five configs, narrower (``--train-units``), trained with SGD on
the data set. The fixed stds are scaled by sqrt(4096 / width), so each layer multiplies the
activation std by the same factor as at 4096 units; Glorot and He scale by themselves.

Usage::

    keras-bn run init_study --quick
    python -m keras_bn.recipes.init_study --data-dir ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from keras_bn import _arg_types as types
from keras_bn.recipes import _common, _findings

NAME = "init_study"
DESCRIPTION = "6 x 4096 tanh/ReLU nets at N(0,0.01^2), N(0,0.05^2), Glorot and He: activation statistics, then training."
STATS_WIDTH = 4096
# config name -> (activation, initializer: a float is the std of N(0, std^2) at STATS_WIDTH units)
CONFIGS = {
    "tanh_normal_0.01": ("tanh", 0.01),
    "tanh_normal_0.05": ("tanh", 0.05),
    "tanh_glorot": ("tanh", "glorot_uniform"),
    "relu_glorot": ("relu", "glorot_uniform"),
    "relu_he": ("relu", "he_normal"),
}
# Quick mode trains only the two configs the training claim compares (the collapsing net and He + ReLU),
# and logs part 1's diagnostics only for the tanh configs (one traced model; He + ReLU is logged training).
QUICK_TRAIN_CONFIGS = ("tanh_normal_0.01", "relu_he")
QUICK_LOGGED = ("tanh_normal_0.01", "tanh_normal_0.05", "tanh_glorot")
# The runs the doctor checks (issue 19): part 1's one-step runs and part 2's training run of the
# collapsing net (quick mode trains He + ReLU without the diagnostics).
HEALTHY = ("tanh_glorot",)
FAULTS = {"tanh_normal_0.01": ("collapsing_activations",),  # SEEDS §4: activations shrink to 0
          "tanh_normal_0.05": ("saturated_units",),  # SEEDS §4: units stuck at +-1
          # trained at 64 units the scaled std (0.08 on 784 inputs) saturates the first layer; the
          # collapse shows live early and has eased by the end, which the doctor's post-hoc pass reads
          "train_tanh_normal_0.01": ("collapsing_activations", "vanishing_gradients", "saturated_units")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=types.positive_int, default=6, help="hidden layers (default 6)")
    parser.add_argument("--samples", type=types.positive_int, default=None,
                        help="standard-normal inputs for the statistics (default 1000; quick 128)")
    parser.add_argument("--stats-width", type=types.positive_int, default=None,
                        help=f"width of the part-1 nets (default {STATS_WIDTH}; quick 1024; fixed stds keep their gain at 4096)")
    parser.add_argument("--train-units", type=types.positive_int, default=None,
                        help="width of the trained nets (default 256; quick 64)")
    parser.add_argument("--batch-size", type=types.positive_int, default=64, help="training batch size (default 64)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--skip-training", action="store_true", help="only the activation statistics")


def _scaled(initializer, width: int):
    """The initializer at `width` units: fixed stds keep the per-layer gain they have at 4096."""
    if isinstance(initializer, float):
        return initializer * math.sqrt(STATS_WIDTH / width)
    return initializer


def _log_one_step(model, x: np.ndarray, path, seed: int) -> None:
    """One SGD step on random labels with the diagnostics on: gradient norms and activation
    statistics (probe: `x`) of the freshly initialized net, in a TensorBoard run. No update
    ratios: the ratio of one step at this arbitrary learning rate would judge the rate, not
    the initialization (the training runs log theirs)."""
    labels = np.random.default_rng(seed).integers(0, 10, len(x))
    _common.ready_to_fit(model, x, labels)
    model.fit(x, labels, batch_size=len(x), epochs=1, verbose=0,
              callbacks=_common.training_callbacks(path, probe=x, every=1, update_ratio=False))


def _compile_sgd(model, learning_rate: float, momentum: float = 0.0, metrics=None) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=momentum),
                  loss="sparse_categorical_crossentropy", metrics=metrics)


def activation_statistics(num_layers: int, samples: int, seed: int, args=None, width: int = STATS_WIDTH,
                          logged=tuple(CONFIGS)) -> dict:
    """Per-layer activation stats (and a sample of the values) of each config at `width` units
    (fixed stds scaled to keep their per-layer gain at 4096, see `_scaled`); with `args`, also a
    diagnostics run of each config in `logged` under ``<invocation folder>/<config>``."""
    import keras_bn
    from keras_bn.activations import activation_family

    x = np.random.default_rng(seed).standard_normal((samples, width)).astype("float32")
    results, compiled = {}, {}  # compiled: activation -> the model each config of it is copied into
    for config, (activation, initializer) in CONFIGS.items():
        model = keras_bn.build_dense((width,), [width] * num_layers, 10, activation=activation,
                                     norm=None, initializer=_scaled(initializer, width), name=config)
        names = _common.activation_layer_names(model, activation)
        outputs = _common.layer_outputs(model, names, x)
        family = activation_family(model.get_layer(names[0]))
        layers = [_common.activation_stats(outputs[n], family) for n in names]
        keep = np.random.default_rng(seed).choice(outputs[names[0]].size, 20000, replace=False)
        results[config] = {"family": family, "layers": layers,
                           "samples": [outputs[n].ravel()[keep] for n in names]}
        if args is not None and config in logged:
            target = _common.compiled_like(compiled, activation, model, lambda m: _compile_sgd(m, 1e-3))
            _log_one_step(target, x, _common.run_dir(args, NAME, config), seed)
        ratio = layers[-1]["std"] / layers[0]["std"]
        print(f"  {config}: std layer 1 {layers[0]['std']:.3g}, layer {num_layers} {layers[-1]['std']:.3g} "
              f"(last/first {ratio:.3g})")
        del model, outputs
    return results


def train_configs(args: argparse.Namespace, data, epochs: int, configs=tuple(CONFIGS)) -> dict:
    """Train `configs` (narrower) with SGD; test accuracy per epoch."""
    import keras_bn

    results, compiled = {}, {}
    for config in configs:
        activation, initializer = CONFIGS[config]
        model = keras_bn.build_dense((data.x_train.shape[1],), [args.train_units] * args.layers, data.num_classes,
                                     activation=activation, norm=None,
                                     initializer=_scaled(initializer, args.train_units), name=config)
        run = f"train_{config}"
        # quick mode: the diagnostics only where the doctor checks (traced, the other run costs 0.5 s)
        diagnosed = not args.quick or run in HEALTHY or run in FAULTS
        model = _common.compiled_like(compiled, activation, model, lambda m: _compile_sgd(
            m, args.learning_rate, 0.9, ["accuracy"]))
        steps = epochs * (len(data.x_train) // args.batch_size)
        callbacks = (_common.training_callbacks(_common.run_dir(args, NAME, run), probe=data.x_test[:256],
                                                fit_steps=steps // epochs) if diagnosed else [])
        history = _common.train_for_steps(model, data, steps=steps, batch_size=args.batch_size,
                                          eval_every=steps // epochs, seed=args.seed, callbacks=callbacks,
                                          label=config)
        results[config] = history
    return results


def run(args: argparse.Namespace) -> dict:
    samples = args.samples or (128 if args.quick else 1000)
    args.train_units = args.train_units or (64 if args.quick else 256)
    width = args.stats_width or (1024 if args.quick else STATS_WIDTH)
    print(f"part 1: activation statistics of {args.layers} x {width} nets on {samples} N(0, 1) inputs")
    stats = activation_statistics(args.layers, samples, args.seed, args, width,
                                  QUICK_LOGGED if args.quick else tuple(CONFIGS))
    columns = ["config", "layer", "mean", "std", "saturated (|a|>0.97)", "dead units"]
    rows = [[config, i + 1, s["mean"], s["std"], _common.dash_nan(s["saturated"]), _common.dash_nan(s["dead"])]
            for config, result in stats.items() for i, s in enumerate(result["layers"])]
    print(_common.format_table(columns, rows))
    _plot_histograms(stats, _common.recipe_dir(args, NAME) / f"{NAME}_histograms.png", width)
    results = {"stats": {c: r["layers"] for c, r in stats.items()}}
    if args.skip_training:
        results["findings"] = explain(results["stats"])
        _findings.report(results["findings"])
        return results

    data = _common.load_data(args, flatten=True)
    epochs = args.epochs or (1 if args.quick else 3)
    print(f"part 2: training {args.layers} x {args.train_units} nets, SGD lr {args.learning_rate}, "
          f"{epochs} epoch(s) on {len(data.x_train)} images")
    training = train_configs(args, data, epochs, QUICK_TRAIN_CONFIGS if args.quick else tuple(CONFIGS))
    rows = [[config, _scaled(CONFIGS[config][1], args.train_units), h["loss"][-1], h["test_accuracy"][-1]]
            for config, h in training.items()]
    print(_common.format_table(["config", f"init at {args.train_units} units", "final train loss", "test acc"], rows))
    _plot_training(training, _common.recipe_dir(args, NAME) / f"{NAME}_training.png", data.name)
    results.update(training=training, epochs=epochs, dataset=data.name)
    results["findings"] = explain(results["stats"], training)
    _findings.report(results["findings"])
    return results


def layer_gain(layers: list) -> float:
    """The measured per-layer factor of the activation std: (last / first) ** (1 / (L - 1))."""
    ratio = layers[-1]["std"] / layers[0]["std"]
    return ratio ** (1 / max(len(layers) - 1, 1))


def explain(stats: dict, training: dict | None = None) -> list:
    """The lecture's claims on this run's activation statistics (and training): N(0, 0.01^2)
    tanh activations collapse, N(0, 0.05^2) saturates, Glorot keeps tanh and He keeps ReLU
    near their scale, Glorot halves ReLU's variance; He + ReLU trains better than the
    collapsing net. The reason is the measured per-layer std factor."""
    def ratio(config):
        return stats[config][-1]["std"] / stats[config][0]["std"]

    def finding(claim, config, held):
        return _findings.Finding(claim, held, f"last/first layer std {ratio(config):.3g}",
                                 f"the measured per-layer std factor is {layer_gain(stats[config]):.3g}")

    least_saturated = min(layer["saturated"] for layer in stats["tanh_normal_0.05"])
    findings = [
        finding("tanh at N(0, 0.01^2): activations collapse towards 0", "tanh_normal_0.01",
                ratio("tanh_normal_0.01") < report_collapse()),
        _findings.Finding("tanh at N(0, 0.05^2): most units saturate in every layer", least_saturated > 0.30,
                          f"least saturated layer {least_saturated:.0%}, threshold 30%",
                          f"the measured per-layer std factor is {layer_gain(stats['tanh_normal_0.05']):.3g}"),
        finding("tanh with Glorot keeps its scale", "tanh_glorot", ratio("tanh_glorot") > 0.3),
        finding("ReLU with He keeps its scale", "relu_he", 0.7 <= ratio("relu_he") <= 1.4),
        finding("ReLU with Glorot shrinks layer by layer", "relu_glorot", ratio("relu_glorot") < 0.5),
    ]
    if training:
        he, tiny = training["relu_he"], training["tanh_normal_0.01"]
        findings.append(_findings.compare(
            "ReLU + He trains to a higher test accuracy than tanh at N(0, 0.01^2)", he["test_accuracy"][-1],
            tiny["test_accuracy"][-1], scale=100, unit=" points",
            reason=f"after {he['step'][-1] if he['step'] else 0} steps, train loss {he['loss'][-1]:.3f} vs "
                   f"{tiny['loss'][-1]:.3f}"))
    return findings


def report_collapse() -> float:
    """`keras_bn.report`'s threshold for collapsing activations (last/first std)."""
    from keras_bn._doctor_base import ACTIVATION_COLLAPSE_RATIO

    return ACTIVATION_COLLAPSE_RATIO


def _plot_histograms(stats: dict, path, width: int):
    import matplotlib.pyplot as plt

    num_layers = len(next(iter(stats.values()))["layers"])
    fig, axes = plt.subplots(len(stats), num_layers, figsize=(2.2 * num_layers, 1.9 * len(stats)), squeeze=False)
    for row, (config, result) in enumerate(stats.items()):
        values = result["samples"]
        limit = 1.0 if result["family"] == "tanh" else max(float(np.percentile(v, 99.5)) for v in values) or 1.0
        bins = np.linspace(-limit if result["family"] == "tanh" else 0.0, limit, 41)
        for col, (ax, v, s) in enumerate(zip(axes[row], values, result["layers"])):
            counts, _ = np.histogram(np.clip(v, bins[0], bins[-1]), bins=bins)
            ax.stairs(counts, bins, fill=True, color=f"C{row}")  # one artist, not 40 bars: fast to draw
            ax.set_yticks([])
            ax.set_title(f"layer {col + 1}: std {s['std']:.2g}", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[row][0].set_ylabel(config, fontsize=8)
    fig.suptitle(f"activations per layer, {num_layers} x {width} units, N(0, 1) inputs")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.05, top=0.9, hspace=0.55, wspace=0.08)  # tight_layout: 3 s
    _common.save_figure(fig, path)


def _plot_training(training: dict, path, dataset: str):
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if max(len(h["step"]) for h in training.values()) == 1:  # one evaluation (quick mode): bars, not dots
        configs = list(training)
        for ax, key in zip(axes, ("loss", "test_accuracy")):
            values = [training[c][key][-1] for c in configs]
            bars = ax.bar(range(len(configs)), values, color=[f"C{i}" for i in range(len(configs))])
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=7)
            ax.set_xticks(range(len(configs)), configs, rotation=30, ha="right", fontsize=8)
            ax.grid(alpha=0.3, axis="y")
        step = training[configs[0]]["step"][-1]
        axes[0].set(title=f"train loss after {step} steps ({dataset})")
        axes[1].set(title=f"test accuracy after {step} steps")
        fig.tight_layout()
        _common.save_figure(fig, path)
        return
    for config, h in training.items():
        axes[0].plot(h["step"], h["loss"], marker="o", label=config)
        axes[1].plot(h["step"], h["test_accuracy"], marker="o", label=config)
    axes[0].set(title=f"train loss ({dataset})", xlabel="step", yscale="log")
    axes[1].set(title="test accuracy", xlabel="step")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _common.finish_figure(fig, axes, path, legend_fontsize=8)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
