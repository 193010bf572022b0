"""LayerNorm where BatchNorm struggles: recurrent nets and tiny batches (Ba et al. 2016).

Two experiments on Fashion-MNIST, both at small batches, each model trained on the same data
order from the same initial weights as its rivals:

1. **Sequential Fashion-MNIST, LSTM vs LN-LSTM** at batch 8: each image is read as a
   sequence of 28 rows of 28 pixels by an LSTM of `--rnn-units` units (Keras' ``LSTM``
   against ``RNN(keras_bn.LayerNormLSTMCell)``; the same kernels, since both keep the gates
   in Keras' order). Loss over steps and test accuracy; "speed-up" is how many fewer steps
   the LN-LSTM needs to reach the plain LSTM's final training loss.
2. **The LN paper's permutation-invariant MLP at batch 4**: 784-`--mlp-units`-10 with
   ReLU, no norm vs BatchNorm vs LayerNorm. With 4 samples per batch, BN's batch statistics
   are noisy and differ from its moving averages at test time; LN normalizes each sample.

Quick mode (``--quick``): 80 steps of each model, two evaluations, LSTM(32), MLP 784-32-10, no
activation-statistics probe (its trace is a fixed cost of every fit),
200 test images. What it must still show: every model learns (its loss falls below ln 10,
test accuracy above chance), and the doctor flags the BN MLP at batch 4. Declared runs
(issue 19): `HEALTHY` and `FAULTS`.

Usage::

    keras-bn run rnn_layernorm --quick
    python -m keras_bn.recipes.rnn_layernorm --data-dir ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse


from keras_bn import _arg_types as types
from keras_bn.recipes import _common

NAME = "rnn_layernorm"
DESCRIPTION = "LSTM vs LN-LSTM on Fashion-MNIST row by row (batch 8); MLP at batch 4: none vs BN vs LN."
RNN_RUNS = {"lstm": None, "ln_lstm": "layer"}
MLP_RUNS = {"mlp_none": None, "mlp_bn": "batch", "mlp_ln": "layer"}
HEALTHY = ("lstm", "ln_lstm", "mlp_none", "mlp_ln")
FAULTS = {"mlp_bn": ("bn_small_batch", "stale_bn_statistics")}  # BN at batch 4 (< 16 per replica)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rnn-steps", type=types.positive_int, default=3000, help="training steps of each LSTM (default 3000)")
    parser.add_argument("--rnn-batch", type=types.positive_int, default=8, help="LSTM batch size (default 8)")
    parser.add_argument("--rnn-units", type=types.positive_int, default=64, help="LSTM units (default 64)")
    parser.add_argument("--mlp-steps", type=types.positive_int, default=5000, help="training steps of each MLP (default 5000)")
    parser.add_argument("--mlp-batch", type=types.positive_int, default=4, help="MLP batch size (default 4)")
    parser.add_argument("--mlp-units", type=types.positive_int, nargs="+", default=[256, 256], help="MLP widths (default 256 256)")
    parser.add_argument("--eval-every", type=types.positive_int, default=250, help="steps between evaluations (default 250)")
    parser.add_argument("--test-size", type=types.positive_int, default=2000, help="test images per evaluation (default 2000)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")


def build_lstms(units: int, num_classes: int) -> dict:
    """The plain and the LN-LSTM on 28 rows of 28 pixels, the LN one given the plain one's weights."""
    import keras_bn

    models = {run: keras_bn.build_recurrent((28, 28), units, num_classes, cell="lstm", norm=norm, name=run)
              for run, norm in RNN_RUNS.items()}
    plain, normed = models["lstm"].get_layer("block1_lstm").cell, models["ln_lstm"].get_layer("block1_lstm").cell
    for name in ("kernel", "recurrent_kernel", "bias"):
        getattr(normed, name).assign(getattr(plain, name))
    models["ln_lstm"].get_layer("logits").set_weights(models["lstm"].get_layer("logits").get_weights())
    return models


def build_mlps(units: list, num_classes: int) -> dict:
    """The three MLPs, sharing the no-norm one's initial kernels."""
    import keras_bn

    models = {run: keras_bn.build_dense((784,), units, num_classes, norm=norm, name=run) for run, norm in MLP_RUNS.items()}
    reference = models["mlp_none"]
    for run in ("mlp_bn", "mlp_ln"):
        for layer in models[run].layers:
            if layer.name.endswith("_dense") or layer.name == "logits":
                layer.kernel.assign(reference.get_layer(layer.name).kernel)
    return models


def steps_to_reach(history: dict, loss: float) -> float:
    """The first evaluation step at which the windowed training loss is <= `loss` (NaN: never)."""
    for step, value in zip(history["step"], history["loss"]):
        if value <= loss:
            return float(step)
    return float("nan")


def _train_all(models: dict, data, args, steps: int, batch: int) -> dict:
    import keras

    histories = {}
    for run, model in models.items():
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        probe = None if args.quick else data.x_test[:64]  # quick: no activation-statistics probe (one trace less per model)
        callbacks = _common.training_callbacks(_common.run_dir(args, NAME, run), probe=probe, every=args.eval_every)
        histories[run] = _common.train_for_steps(model, data, steps=steps, batch_size=batch, eval_every=args.eval_every,
                                                 seed=args.seed, callbacks=callbacks, label=run)
    return histories


def run(args: argparse.Namespace) -> dict:
    if args.quick:
        args.rnn_steps, args.mlp_steps, args.eval_every, args.rnn_units, args.mlp_units = 80, 80, 40, 32, [32]
        args.test_size = 200
    images = _common.load_data(args, flatten=False)
    test = slice(0, args.test_size)
    sequences = images._replace(x_train=images.x_train[..., 0], x_test=images.x_test[test, ..., 0], y_test=images.y_test[test])
    flat = images._replace(x_train=images.x_train.reshape(len(images.x_train), -1),
                           x_test=images.x_test[test].reshape(len(sequences.x_test), -1), y_test=images.y_test[test])

    print(f"1. {images.name} as 28 rows of 28 pixels: LSTM({args.rnn_units}) vs LN-LSTM, batch {args.rnn_batch}, "
          f"{args.rnn_steps} steps")
    rnn = _train_all(build_lstms(args.rnn_units, images.num_classes), sequences, args, args.rnn_steps, args.rnn_batch)
    target = rnn["lstm"]["loss"][-1]
    speed = {"lstm_steps": steps_to_reach(rnn["lstm"], target), "ln_lstm_steps": steps_to_reach(rnn["ln_lstm"], target)}
    print(f"2. permutation-invariant MLP 784-{'-'.join(map(str, args.mlp_units))}-10, batch {args.mlp_batch}, "
          f"{args.mlp_steps} steps: none vs BN vs LN")
    mlp = _train_all(build_mlps(args.mlp_units, images.num_classes), flat, args, args.mlp_steps, args.mlp_batch)

    histories = {**rnn, **mlp}
    print(_common.format_table(["step"] + [f"{r} loss" for r in rnn],
                               [[s] + [rnn[r]["loss"][i] for r in rnn] for i, s in enumerate(rnn["lstm"]["step"])]))
    rows = [[run, h["loss"][-1], h["test_accuracy"][-1], h["seconds"]] for run, h in histories.items()]
    print(_common.format_table(["model", "final train loss", "test acc", "seconds"], rows))
    print(f"LN-LSTM reached the LSTM's final training loss ({target:.4f}) at step {speed['ln_lstm_steps']:g} "
          f"(LSTM: step {speed['lstm_steps']:g})")
    _plot(rnn, mlp, _common.recipe_dir(args, NAME) / f"{NAME}.png", images.name, args)
    return {"dataset": images.name, "history": histories, "speed": speed}


def _plot(rnn: dict, mlp: dict, path, dataset: str, args):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for run, history in rnn.items():
        axes[0].plot(history["step"], history["loss"], marker="o", label=run)
    for run, history in mlp.items():
        axes[1].plot(history["step"], history["loss"], marker="o", label=run)
    for run, history in {**rnn, **mlp}.items():
        axes[2].plot(history["step"], history["test_accuracy"], marker="o", label=run)
    axes[0].set(title=f"{dataset} row by row, batch {args.rnn_batch}: train loss", xlabel="step")
    axes[1].set(title=f"MLP, batch {args.mlp_batch}: train loss", xlabel="step")
    axes[2].set(title="test accuracy", xlabel="step")
    _common.finish_figure(fig, axes, path, legend_fontsize=7)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
