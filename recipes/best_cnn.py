"""The best small CNN: the most accurate Fashion-MNIST classifier one builder call makes
within a training-time budget (``--minutes``, 15 on 2 CPU cores by default); ``--family
resnet`` uses `build_resnet` (ResNet-20) instead of `build_conv`, ``--augment`` adds random
shifts and flips (Keras preprocessing layers).

The network: three conv blocks (32, 64, 128 filters; Conv -> BN -> ReLU -> dropout 0.2,
2x2 max-pool), a flattened head, one 128-unit dense block, softmax (about 0.9 s of CPU per
1,000 images here, so 15 minutes buy about 20 epochs; a wider net got 5). Adam with a
per-epoch cosine decay over the epochs that fit the budget, estimated from the first epoch;
the same callback stops before the budget runs out. Prints parameters, epochs, seconds and
test accuracy; the run is logged with `keras_bn.callbacks.diagnostics` (loss, gradient norms,
update ratios and the live doctor, whose findings it prints).

Usage::

    keras-bn run best_cnn --data-dir ../shared/data/fashion-mnist
    keras-bn run best_cnn --quick
    keras-bn run best_cnn --family resnet --augment --minutes 30
"""

from __future__ import annotations

import argparse
import math
import time

import keras

from keras_bn import _arg_types as types
from keras_bn.recipes import _common

NAME = "best_cnn"
DESCRIPTION = "The most accurate Fashion-MNIST net one builder call makes in a CPU budget (--minutes)."
RUN = "train"  # its one run, logged with keras_bn.callbacks.diagnostics (the live doctor included)
HEALTHY = (RUN,)
FAULTS: dict = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", "--budget-minutes", dest="budget_minutes", type=types.positive_float, default=15.0,
                        help="training-time budget in minutes (default 15)")
    parser.add_argument("--family", choices=FAMILIES, default="conv",
                        help="conv: one build_conv call; resnet: one build_resnet call (ResNet-20, "
                        "option A shortcuts, BN) (default conv)")
    parser.add_argument("--augment", action="store_true",
                        help="standard augmentation with Keras preprocessing layers: random shifts of up "
                        "to 2 pixels and horizontal flips (training only)")
    parser.add_argument("--batch-size", type=types.positive_int, default=128, help="batch size (default 128)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=2e-3,
                        help="peak Adam learning rate (default 2e-3)")


FAMILIES = ("conv", "resnet")


def build_model(input_shape, num_classes: int, *, quick: bool = False, family: str = "conv",
                augment: bool = False) -> keras.Model:
    """The recipe's net: one build_conv or build_resnet call (narrower in quick mode),
    optionally behind augmentation layers (active in training only)."""
    import keras_bn

    if family == "resnet":
        widths = (4, 8, 8) if quick else (16, 32, 64)
        model = keras_bn.build_resnet(input_shape, 8 if quick else 20, num_classes, widths=widths, name=NAME)
    else:
        filters, dense = ([8, 16], [32]) if quick else ([32, 64, 128], [128])
        model = keras_bn.build_conv(input_shape, filters, num_classes, head="flatten",
                                    dense_units=dense, dropout=0.2, name=NAME)
    if not augment:
        return model
    shift = 2 / input_shape[0]  # up to 2 pixels, as in the CIFAR ResNet recipe's 4-pixel pad-and-crop
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.RandomTranslation(shift, shift, fill_mode="constant", name="augment_shift"),
        keras.layers.RandomFlip("horizontal", name="augment_flip"),
        model,
    ], name=f"{NAME}_augmented")


class TimeBudget(keras.callbacks.Callback):
    """Fits training into `seconds`: a cosine learning-rate decay from `peak_lr` over the
    epochs that fit (estimated after the first epoch; without `peak_lr` the learning rate is
    left alone), and a stop when another epoch would not finish in time."""

    def __init__(self, seconds: float, peak_lr: float | None = None):
        super().__init__()
        self.seconds = seconds
        self.peak_lr = peak_lr
        self.stopped_early = False
        self.planned_epochs = None

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self.planned_epochs = self.params["epochs"]

    def on_epoch_begin(self, epoch, logs=None):
        if self.peak_lr is not None:
            progress = min(epoch / max(self.planned_epochs, 1), 1.0)
            self.model.optimizer.learning_rate.assign(self.peak_lr * 0.5 * (1 + math.cos(math.pi * progress)))

    def on_epoch_end(self, epoch, logs=None):
        per_epoch = (time.perf_counter() - self._start) / (epoch + 1)
        if epoch == 0:
            self.planned_epochs = max(1, min(self.params["epochs"], int(self.seconds // per_epoch)))
        if per_epoch * (epoch + 2) > self.seconds:
            self.model.stop_training = True
            self.stopped_early = epoch + 1 < self.params["epochs"]


def run(args: argparse.Namespace) -> dict:
    data = _common.load_data(args, flatten=False)
    epochs = args.epochs or (2 if args.quick else 30)  # two points: a curve, not a dot
    model = build_model(data.x_train.shape[1:], data.num_classes, quick=args.quick, family=args.family,
                        augment=args.augment)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    _common.ready_to_fit(model, data.x_train[:args.batch_size], data.y_train[:args.batch_size])
    timer, budget = _common.EpochTimer(), TimeBudget(args.budget_minutes * 60, peak_lr=args.learning_rate)
    steps_per_epoch = math.ceil(len(data.x_train) / args.batch_size)
    diagnostics = _common.training_callbacks(_common.run_dir(args, NAME, RUN), fit_steps=steps_per_epoch)
    print(f"{model.count_params():,} parameters; up to {epochs} epochs within {args.budget_minutes:g} min")
    history = model.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=epochs,
                        validation_data=(data.x_test, data.y_test), callbacks=[timer, budget, *diagnostics],
                        verbose=2)
    test_loss, test_accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    result = {
        "family": args.family,
        "augment": args.augment,
        "budget_minutes": args.budget_minutes,
        "parameters": model.count_params(),
        "epochs": len(timer.seconds),
        "train_seconds": sum(timer.seconds),
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "stopped_by_budget": budget.stopped_early,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    print(_common.format_table(
        ["family", "augment", "budget min", "parameters", "epochs", "train minutes", "test accuracy",
         "stopped by budget"],
        [[args.family, args.augment, args.budget_minutes, f"{result['parameters']:,}", result["epochs"],
          result["train_seconds"] / 60,
          result["test_accuracy"], result["stopped_by_budget"]]]))
    _plot(result["history"], _common.recipe_dir(args, NAME) / f"{NAME}.png")
    return result


def _plot(history: dict, path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    epochs = range(1, len(history["accuracy"]) + 1)
    ax.plot(epochs, history["accuracy"], marker="o", label="train accuracy")
    ax.plot(epochs, history["val_accuracy"], marker="o", label="test accuracy")
    ax.set(xlabel="epoch", title="best small CNN")
    _common.finish_figure(fig, [ax], path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
