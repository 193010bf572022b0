"""Degradation: deeper plain nets train worse, residual ones do not (He et al. 2015, §4.2).

Plain-20 and plain-56 against ResNet-20 and ResNet-56 (option A shortcuts, BN, the same
widths, optimizer, steps and data order) on Fashion-MNIST. Measured: the training error over
steps (on a fixed subset of the training set, inference mode), the final test accuracy, the
per-layer kernel gradient norms at the start and the end (the paper's point: the plain nets'
gradients stay healthy with BN, yet they train worse), and the std of each block's response
(the output of the block's last BN, before the sum and the ReLU: the paper's Fig. 7).

Usage::

    keras-bn run degradation --quick
    python -m keras_bn.recipes.degradation --steps 800 --widths 8 16 32 --image-size 14
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

from keras_bn import _arg_types as types
from keras_bn.recipes import _common

NAME = "degradation"
DESCRIPTION = "Plain-20/56 vs ResNet-20/56 with BN, same steps: deeper plain nets train worse (He et al. §4.2)."
# Every run is meant to be healthy by the doctor's rules: degradation is the paper's point
# exactly because the deep plain net's gradients and statistics look fine (BN), yet it
# trains worse; no doctor rule fires on it. Run names: plain<depth>, resnet<depth>.
QUICK_DEPTHS = (8, 14)
DEFAULT_DEPTHS = (20, 56)
HEALTHY = tuple(f"{kind}{depth}" for kind in ("plain", "resnet") for depth in QUICK_DEPTHS)
FAULTS: dict = {}
TRAIN_ERROR_SAMPLES = 2000
# The paper's Torch BN keeps 0.9 of the moving average per step (Keras' default 0.99 needs
# hundreds of steps before inference-mode error means anything).
BN_MOMENTUM = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depths", type=types.positive_int, nargs="+", default=None,
                        help="6n+2 depths to compare (default 20 56; quick: 8 14)")
    parser.add_argument("--widths", type=types.positive_int, nargs=3, default=None,
                        help="filters of the three stages (paper 16 32 64; default 8 16 32 for the CPU budget)")
    parser.add_argument("--steps", type=types.positive_int, default=None, help="training steps per net (default 800; quick 20)")
    parser.add_argument("--eval-every", type=types.positive_int, default=None, help="steps between evaluations (default 100)")
    parser.add_argument("--batch-size", type=types.positive_int, default=32, help="batch size (default 32, for the CPU budget)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=0.05,
                        help="SGD learning rate, momentum 0.9 as in the paper (default 0.05)")
    parser.add_argument("--image-size", type=types.positive_int, choices=(14, 28), default=None,
                        help="train on 2x2-average-pooled 14x14 images to fit the CPU budget (default 14)")


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """(N, 28, 28, 1) images average-pooled to `size` x `size` (28 keeps them)."""
    if size == images.shape[1]:
        return images
    f = images.shape[1] // size
    n, h, w, c = images.shape
    return images.reshape(n, size, f, size, f, c).mean(axis=(2, 4)).astype(images.dtype)


class TrainError(keras.callbacks.Callback):
    """The error on a fixed training subset (inference mode) after each Keras epoch, or with
    ``each_epoch=False`` once, when training ends (the last epoch's value, for one call).

    Direct model calls (`_common.direct_predict`): the same numbers as ``predict``, without
    tracing a predict function for a few calls."""

    def __init__(self, x, y, each_epoch: bool = True):
        super().__init__()
        self.x, self.y, self.each_epoch, self.errors = x, y, each_epoch, []

    def on_epoch_end(self, epoch, logs=None):
        if self.each_epoch:
            self._record()

    def on_train_end(self, logs=None):
        if not self.each_epoch:
            self._record()

    def _record(self):
        probs = _common.direct_predict(self.model, self.x)
        self.errors.append(float(np.mean(np.argmax(probs, axis=-1) != self.y)))


def block_response_std(model, x) -> list[float]:
    """Std of each block's response: the output of its last norm (He et al. Fig. 7)."""
    names = [layer.name for layer in model.layers if layer.name.startswith("stage") and layer.name.endswith("_bn2")]
    outputs = _common.layer_outputs(model, names, x)
    return [float(outputs[n].std()) for n in names]


def grad_norm_summary(norms: dict) -> tuple[float, float, float]:
    """(min, median, max) of the conv kernels' gradient norms (the classifier left out)."""
    values = np.array([v for k, v in norms.items() if k != "logits"])
    return float(values.min()), float(np.median(values)), float(values.max())


def run(args: argparse.Namespace) -> dict:
    import keras_bn

    depths = args.depths or list(QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)
    widths = args.widths or ([4, 4, 8] if args.quick else [8, 16, 32])
    steps = args.steps or (20 if args.quick else 800)
    eval_every = args.eval_every or (10 if args.quick else 100)
    size = args.image_size or 14
    data = _common.load_data(args, flatten=False)
    data = data._replace(x_train=downsample(data.x_train, size), x_test=downsample(data.x_test, size))
    subset = slice(0, 500 if args.quick else TRAIN_ERROR_SAMPLES)
    x_sub, y_sub = data.x_train[subset], data.y_train[subset]
    x_grad, y_grad = data.x_train[:args.batch_size], data.y_train[:args.batch_size]
    runs = [(f"{'resnet' if residual else 'plain'}{d}", d, residual) for residual in (False, True) for d in depths]
    print(f"training {', '.join(r for r, _, _ in runs)} (widths {widths}, {size}x{size} images) for {steps} steps "
          f"each on {len(data.x_train)} images")
    built = {run_name: keras_bn.build_resnet(data.x_train.shape[1:], depth, data.num_classes, widths=widths,
                                             residual=residual, norm_kwargs={"momentum": BN_MOMENTUM}, name=run_name)
             for run_name, depth, residual in runs}
    # Each depth's plain and residual nets train on one traced model (`_common.twin_model`): the
    # plain net is the residual one with its shortcuts gated to zero, the same numbers.
    twins = {}
    for depth in depths:
        twins[depth] = _common.twin_model(built[f"resnet{depth}"], lambda layer: _common.ShortcutGate(name=layer.name)
                                          if isinstance(layer, keras.layers.Add) else None)
        twins[depth].compile(optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
                             loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    results = {}
    for run_name, depth, residual in runs:
        model = _common.load_twin(twins[depth], built[run_name], "residual" if residual else "plain")
        grads_start = _common.kernel_gradient_norms(model, x_grad, y_grad)
        train_error = TrainError(x_sub, y_sub)
        callbacks = [train_error, *_common.training_callbacks(_common.run_dir(args, NAME, run_name))]
        history = _common.train_for_steps(model, data, steps=steps, batch_size=args.batch_size,
                                          eval_every=eval_every, seed=args.seed, callbacks=callbacks,
                                          label=run_name)
        history["train_error"] = train_error.errors
        history["grads_start"] = grad_norm_summary(grads_start)
        history["grads_end"] = grad_norm_summary(_common.kernel_gradient_norms(model, x_grad, y_grad))
        history["response_std"] = block_response_std(model, data.x_test[:500])
        history["params"] = built[run_name].count_params()
        results[run_name] = history

    rows = [[run, r["params"], r["train_error"][-1], r["loss"][-1], r["test_accuracy"][-1],
             "{:.2g} / {:.2g} / {:.2g}".format(*r["grads_start"]), "{:.2g} / {:.2g} / {:.2g}".format(*r["grads_end"]),
             float(np.mean(r["response_std"])), r["seconds"]]
            for run, r in results.items()]
    print(_common.format_table(
        ["net", "params", "train error", "train loss", "test acc", "grad norm min/med/max (start)",
         "(end)", "mean block response std", "seconds"], rows))
    verdict = ordering(results, depths)
    print(verdict["text"])
    _plot(results, _common.recipe_dir(args, NAME) / f"{NAME}.png", data.name, eval_every)
    return {"steps": steps, "widths": widths, "depths": depths, "image_size": size, "runs": results, **verdict}


def ordering(results: dict, depths: list[int]) -> dict:
    """Whether the paper's ordering held: deeper plain trains worse, deeper ResNet no worse."""
    shallow, deep = min(depths), max(depths)
    err = {run: r["train_error"][-1] for run, r in results.items()}
    plain_degrades = err[f"plain{deep}"] > err[f"plain{shallow}"]
    resnet_ok = err[f"resnet{deep}"] <= err[f"resnet{shallow}"]
    text = (f"paper's ordering: plain-{deep} train error {'above' if plain_degrades else 'NOT above'} plain-{shallow} "
            f"({err[f'plain{deep}']:.4f} vs {err[f'plain{shallow}']:.4f}); resnet-{deep} "
            f"{'at or below' if resnet_ok else 'NOT at or below'} resnet-{shallow} "
            f"({err[f'resnet{deep}']:.4f} vs {err[f'resnet{shallow}']:.4f})")
    return {"plain_degrades": plain_degrades, "resnet_no_worse": resnet_ok, "text": text}


def _plot(results: dict, path, dataset: str, eval_every: int):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for run, r in results.items():
        style = "--" if run.startswith("plain") else "-"
        steps = [eval_every * (i + 1) for i in range(len(r["train_error"]))]
        axes[0].plot(steps, np.array(r["train_error"]) * 100, style, label=run)
        axes[1].plot(range(1, len(r["response_std"]) + 1), r["response_std"], style, marker=".", label=run)
    axes[0].set(title=f"training error, % ({dataset})", xlabel="step")
    axes[1].set(title="std of each block's response (last BN output)", xlabel="block")
    _common.finish_figure(fig, axes, path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
