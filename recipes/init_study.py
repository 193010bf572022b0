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
from keras_bn.recipes import _common

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=types.positive_int, default=6, help="hidden layers (default 6)")
    parser.add_argument("--samples", type=types.positive_int, default=None,
                        help="standard-normal inputs for the statistics (default 1000; quick 256)")
    parser.add_argument("--train-units", type=types.positive_int, default=256, help="width of the trained nets (default 256)")
    parser.add_argument("--batch-size", type=types.positive_int, default=64, help="training batch size (default 64)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--skip-training", action="store_true", help="only the activation statistics")


def _scaled(initializer, width: int):
    """The initializer at `width` units: fixed stds keep the per-layer gain they have at 4096."""
    if isinstance(initializer, float):
        return initializer * math.sqrt(STATS_WIDTH / width)
    return initializer


def _log_one_step(model, x: np.ndarray, path, seed: int) -> None:
    """One SGD step on random labels with the diagnostics on: gradient norms, update ratios and
    activation statistics (probe: `x`) of the freshly initialized net, in a TensorBoard run."""
    import keras

    labels = np.random.default_rng(seed).integers(0, 10, len(x))
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, labels, batch_size=len(x), epochs=1, verbose=0,
              callbacks=_common.training_callbacks(path, probe=x, every=1))


def activation_statistics(num_layers: int, samples: int, seed: int, args=None) -> dict:
    """Per-layer activation stats (and a sample of the values) of each config at 4096 units;
    with `args`, also a diagnostics run of each config under ``<log_dir>/init_study/<config>``."""
    import keras

    import keras_bn
    from keras_bn.activations import activation_family

    x = np.random.default_rng(seed).standard_normal((samples, STATS_WIDTH)).astype("float32")
    results = {}
    for config, (activation, initializer) in CONFIGS.items():
        model = keras_bn.build_dense((STATS_WIDTH,), [STATS_WIDTH] * num_layers, 10, activation=activation,
                                     norm=None, initializer=initializer, name=config)
        names = _common.activation_layer_names(model, activation)
        outputs = _common.layer_outputs(model, names, x)
        family = activation_family(model.get_layer(names[0]))
        layers = [_common.activation_stats(outputs[n], family) for n in names]
        keep = np.random.default_rng(seed).choice(outputs[names[0]].size, 20000, replace=False)
        results[config] = {"family": family, "layers": layers,
                           "samples": [outputs[n].ravel()[keep] for n in names]}
        if args is not None:
            _log_one_step(model, x, _common.run_dir(args, NAME, config), seed)
        ratio = layers[-1]["std"] / layers[0]["std"]
        print(f"  {config}: std layer 1 {layers[0]['std']:.3g}, layer {num_layers} {layers[-1]['std']:.3g} "
              f"(last/first {ratio:.3g})")
        del model, outputs
        keras.backend.clear_session(free_memory=True)
    return results


def train_configs(args: argparse.Namespace, data, epochs: int) -> dict:
    """Train each config (narrower) with SGD; test accuracy per epoch."""
    import keras

    import keras_bn

    results = {}
    for config, (activation, initializer) in CONFIGS.items():
        model = keras_bn.build_dense((data.x_train.shape[1],), [args.train_units] * args.layers, data.num_classes,
                                     activation=activation, norm=None,
                                     initializer=_scaled(initializer, args.train_units), name=config)
        model.compile(optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        steps = epochs * (len(data.x_train) // args.batch_size)
        callbacks = _common.training_callbacks(_common.run_dir(args, NAME, f"train_{config}"),
                                               probe=data.x_test[:256])
        history = _common.train_for_steps(model, data, steps=steps, batch_size=args.batch_size,
                                          eval_every=steps // epochs, seed=args.seed, callbacks=callbacks,
                                          label=config)
        results[config] = history
    return results


def run(args: argparse.Namespace) -> dict:
    samples = args.samples or (256 if args.quick else 1000)
    print(f"part 1: activation statistics of {args.layers} x {STATS_WIDTH} nets on {samples} N(0, 1) inputs")
    stats = activation_statistics(args.layers, samples, args.seed, args)
    columns = ["config", "layer", "mean", "std", "saturated (|a|>0.97)", "dead units"]
    rows = [[config, i + 1, s["mean"], s["std"], _common.dash_nan(s["saturated"]), _common.dash_nan(s["dead"])]
            for config, result in stats.items() for i, s in enumerate(result["layers"])]
    print(_common.format_table(columns, rows))
    _plot_histograms(stats, _common.recipe_dir(args, NAME) / f"{NAME}_histograms.png")
    results = {"stats": {c: r["layers"] for c, r in stats.items()}}
    if args.skip_training:
        return results

    data = _common.load_data(args, flatten=True)
    epochs = args.epochs or (1 if args.quick else 3)
    print(f"part 2: training {args.layers} x {args.train_units} nets, SGD lr {args.learning_rate}, "
          f"{epochs} epoch(s) on {len(data.x_train)} images")
    training = train_configs(args, data, epochs)
    rows = [[config, _scaled(CONFIGS[config][1], args.train_units), h["loss"][-1], h["test_accuracy"][-1]]
            for config, h in training.items()]
    print(_common.format_table(["config", f"init at {args.train_units} units", "final train loss", "test acc"], rows))
    _plot_training(training, _common.recipe_dir(args, NAME) / f"{NAME}_training.png", data.name)
    results.update(training=training, epochs=epochs, dataset=data.name)
    return results


def _plot_histograms(stats: dict, path):
    import matplotlib.pyplot as plt

    num_layers = len(next(iter(stats.values()))["layers"])
    fig, axes = plt.subplots(len(stats), num_layers, figsize=(2.2 * num_layers, 1.9 * len(stats)), squeeze=False)
    for row, (config, result) in enumerate(stats.items()):
        values = result["samples"]
        limit = 1.0 if result["family"] == "tanh" else max(float(np.percentile(v, 99.5)) for v in values) or 1.0
        bins = np.linspace(-limit if result["family"] == "tanh" else 0.0, limit, 41)
        for col, (ax, v, s) in enumerate(zip(axes[row], values, result["layers"])):
            ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, color=f"C{row}")
            ax.set_yticks([])
            ax.set_title(f"layer {col + 1}: std {s['std']:.2g}", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[row][0].set_ylabel(config, fontsize=8)
    fig.suptitle(f"activations per layer, {num_layers} x {STATS_WIDTH} units, N(0, 1) inputs")
    fig.tight_layout()
    _common.save_figure(fig, path)


def _plot_training(training: dict, path, dataset: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for config, h in training.items():
        axes[0].plot(h["step"], h["loss"], marker="o", label=config)
        axes[1].plot(h["step"], h["test_accuracy"], marker="o", label=config)
    axes[0].set(title=f"train loss ({dataset})", xlabel="step", yscale="log")
    axes[1].set(title="test accuracy", xlabel="step")
    _common.finish_figure(fig, axes, path, legend_fontsize=8)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
