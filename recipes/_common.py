"""What every recipe shares: options, data, seeding, the run folder, tables and figures.

A recipe module defines ``DESCRIPTION`` (one line), ``add_arguments(parser)`` for its own
options, and ``run(args) -> dict`` that prints a table, writes PNGs and TensorBoard runs to
the invocation's own folder (`recipe_dir`: ``<log_dir>/<recipe>/<YYYYmmdd-HHMMSS>/``, its runs
in ``<run>/`` below it; a re-run makes a new folder and nothing is ever deleted), and returns
its measurements. `main` below turns that into a script::

    python -m keras_bn.recipes.bn_vs_no_bn --quick
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras

import numpy as np

from keras_bn import _arg_types as types
from keras_bn._run_folders import new_invocation_dir
from keras_bn._tables import format_table  # noqa: F401  (recipes call _common.format_table)
from keras_bn.recipes._reuse import (  # noqa: F401  (recipes call _common.restart, ...)
    ActivationSwitch,
    EagerValidation,
    ShortcutGate,
    compiled_like,
    copy_weights,
    direct_predict,
    initial_state,
    load_twin,
    ready_to_fit,
    restart,
    twin_model,
)

QUICK_TRAIN_SAMPLES = 2000
QUICK_TEST_SAMPLES = 500
# |tanh| above this counts as saturated (the lecture's threshold); for sigmoid, |2a - 1| above it.
SATURATION_THRESHOLD = 0.97


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options every recipe takes, each range-checked by its type (`keras_bn._arg_types`)."""
    parser = types.ArgumentParser(prog=f"keras-bn run {name}", description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings that finish in seconds (smoke tests)")
    parser.add_argument("--seed", type=types.seed, default=0, help="random seed, 0 to 2**32-1 (default 0)")
    parser.add_argument("--epochs", type=types.positive_int, default=None,
                        help="training epochs, >= 1 (recipe default)")
    parser.add_argument("--dataset", type=types.dataset_name, default="fashion_mnist",
                        help="mnist, fashion_mnist or fashion_mnist_small (default fashion_mnist)")
    parser.add_argument("--data-dir", type=types.existing_dir, default=None,
                        help="folder with the four IDX .gz files (default: see keras_bn.data.load)")
    parser.add_argument("--log-dir", type=types.writable_dir, default=None,  # None: "logs", made by the run
                        help="root of the output folders (default logs); each run adds <log-dir>/<recipe>/<date-time>/")
    parser.add_argument("--strategy", choices=("none", "mirrored", "multiworker"), default="none",
                        help="tf.distribute strategy the models are built, compiled and trained under: "
                        "mirrored = every local device, multiworker = the cluster in TF_CONFIG "
                        "(batch sizes are global; default none)")
    parser.add_argument("--mixed-precision", choices=("float16", "bfloat16"), default=None,
                        help="Keras mixed-precision policy (mixed_float16 / mixed_bfloat16; default: float32)")
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    return parser


@contextlib.contextmanager
def strategy_scope(args: argparse.Namespace):
    """Set `args.mixed_precision`'s policy and enter `args.strategy`'s scope for the block;
    yields the strategy (None for "none") and restores the previous policy on exit.

    Under "multiworker" it also applies `keras_bn.distribute.apply_keras_compat`; every
    worker runs the same command, only the chief writes TensorBoard summaries.

    Example::

        with strategy_scope(args) as strategy:
            results = run(args)
    """
    from keras_bn import distribute

    previous = keras.mixed_precision.global_policy()
    strategy = distribute.make_strategy(getattr(args, "strategy", "none"))  # first: MWMS wants a fresh runtime
    distribute.set_mixed_precision(getattr(args, "mixed_precision", None))
    try:
        with distribute.scope(strategy):
            yield strategy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def set_seed(seed: int) -> None:
    """Seed Python, numpy and the backend, and make TF ops deterministic."""
    keras.utils.set_random_seed(seed)


def load_data(args: argparse.Namespace, *, flatten: bool):
    """The standardized data set of `args` (subsampled in quick mode), as a Dataset."""
    from keras_bn import data as kb_data

    dataset = kb_data.load(args.dataset, args.data_dir)
    x_train, y_train, x_test, y_test = dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    if args.quick:
        x_train, y_train = x_train[:QUICK_TRAIN_SAMPLES], y_train[:QUICK_TRAIN_SAMPLES]
        x_test, y_test = x_test[:QUICK_TEST_SAMPLES], y_test[:QUICK_TEST_SAMPLES]
    x_train, x_test = kb_data.standardize(x_train, x_test, flatten=flatten)
    if not flatten:
        x_train, x_test = x_train[..., None], x_test[..., None]
    return dataset._replace(x_train=x_train, y_train=y_train.astype("int32"),
                            x_test=x_test, y_test=y_test.astype("int32"))


def recipe_dir(args: argparse.Namespace, recipe: str) -> Path:
    """This invocation's own folder, ``<log_dir>/<recipe>/<YYYYmmdd-HHMMSS>[-n]/``: made
    fresh on the first call (see `keras_bn._run_folders`), the same folder afterwards."""
    folder = getattr(args, "invocation_dir", None)
    if folder is None:
        folder = new_invocation_dir(Path(args.log_dir or "logs") / recipe, recipe=recipe, argv=getattr(args, "argv", ()))
        args.invocation_dir = folder
    return folder


def run_dir(args: argparse.Namespace, recipe: str, run: str) -> Path:
    """``<recipe_dir>/<run>/``: one TensorBoard run of this invocation (created by its writer)."""
    return recipe_dir(args, recipe) / run


def dash_nan(value: object) -> object:
    """`value`, or "-" for a NaN (a statistic that does not apply), for `format_table`."""
    return "-" if isinstance(value, float) and math.isnan(value) else value


class EpochTimer(keras.callbacks.Callback):
    """Records the seconds of each training epoch in `.seconds`."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def full_mode_probe(args: argparse.Namespace, data, samples: int = 256):
    """The activation-statistics probe of a run no claim or doctor rule of quick mode reads:
    ``data.x_test[:samples]``, or None with ``--quick`` (tracing the probe's read costs about
    1.5 s of CPU per model, a fit of a quick mode about as much).

    Example::

        cbs = _common.training_callbacks(path, probe=_common.full_mode_probe(args, data), fit_steps=31)
    """
    return None if args.quick else data.x_test[:samples]


def training_callbacks(path: Path, probe=None, every: int | None = None, *, fit_steps: int | None = None,
                       update_ratio: bool = True) -> list:
    """The TensorBoard logging of every recipe's training runs, chosen in this one place:
    ``keras_bn.callbacks.diagnostics`` (loss/metrics, gradient norms, update ratios and,
    given a `probe`, activation statistics).

    `every` defaults to a third of `fit_steps` (the steps of each ``fit`` call; at most 100),
    so that even a short fit crosses a multiple of `every` and logs its update ratios
    (`update_ratio=False` leaves them out).
    Its per-epoch figures are off: recipes often make each "epoch" a short evaluation
    period (`train_for_steps`) and draw their own PNGs.

    Example::

        cbs = _common.training_callbacks(run_dir(args, NAME, "with_bn"), x_test[:256], fit_steps=31)
    """
    from keras_bn.callbacks import diagnostics

    if every is None:
        every = min(100, max(1, fit_steps // 3)) if fit_steps else 100
    return diagnostics(str(path), probe=probe, every=every, figures=False, update_ratio=update_ratio)


def train_for_steps(model: keras.Model, data, *, steps: int, batch_size: int, eval_every: int,
                    seed: int, callbacks: Sequence = (), label: str = "", any_batch_size: bool = False) -> dict:
    """Fit `model` (compiled with an accuracy metric) for `steps` batches of a seeded shuffle.

    Each Keras "epoch" is `eval_every` steps, after which the test set is evaluated, so
    TensorBoard's epoch axis counts evaluations; `steps` is rounded down to a multiple of
    `eval_every`. Training stops at a non-finite loss. With `any_batch_size` the train step is
    traced for batches of any size (the batches are the same), so that a later fit of `model`
    at another batch size does not trace it again.

    Returns:
        ``{"step": [...], "loss": [...], "test_accuracy": [...], "seconds": float,
        "diverged": bool}``, one list entry per evaluation.

    Example::

        history = train_for_steps(model, data, steps=1000, batch_size=60, eval_every=100, seed=0)
    """
    import tensorflow as tf

    dataset = (tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
               .shuffle(len(data.x_train), seed=seed).repeat().batch(batch_size, drop_remainder=not any_batch_size))
    eval_every = min(eval_every, steps)
    ready_to_fit(model, data.x_train[:batch_size], data.y_train[:batch_size])
    if EagerValidation.applies_to(model):  # the same numbers, without tracing a test step
        validation = {"callbacks": [EagerValidation(data.x_test, data.y_test), keras.callbacks.TerminateOnNaN(),
                                    *callbacks]}
    else:
        validation = {"validation_data": (data.x_test, data.y_test), "validation_batch_size": 500,
                      "callbacks": [keras.callbacks.TerminateOnNaN(), *callbacks]}
    start = time.perf_counter()
    fit = model.fit(dataset, steps_per_epoch=eval_every, epochs=steps // eval_every, verbose=0, shuffle=False,
                    **validation)
    losses = [float(v) for v in fit.history["loss"]]
    history = {
        "step": [eval_every * (i + 1) for i in range(len(losses))],
        "loss": losses,
        "test_accuracy": [float(v) for v in fit.history.get("val_accuracy", [])],
        "seconds": time.perf_counter() - start,
        "diverged": not np.all(np.isfinite(losses)),
    }
    if len(history["test_accuracy"]) < len(losses):  # TerminateOnNaN skipped the last evaluation
        history["test_accuracy"].append(float("nan"))
    if label:
        print(f"  {label}: {len(losses) * eval_every} steps in {history['seconds']:.1f} s, "
              f"loss {losses[-1]:.4f}, test acc {history['test_accuracy'][-1]:.4f}"
              + (" (diverged)" if history["diverged"] else ""))
    return history


def layer_outputs(model: keras.Model, names: Sequence[str], x: np.ndarray, training: bool = False) -> dict:
    """The outputs of the layers `names` of a Functional `model` on `x`, as numpy arrays."""
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    outputs = probe(x, training=training)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {n: keras.ops.convert_to_numpy(o) for n, o in zip(names, outputs)}


def activation_layer_names(model: keras.Model, activation) -> list[str]:
    """The names of the hidden activation layers of a keras-bn builder model, first to last."""
    from keras_bn.activations import activation_name

    suffix = f"_{activation_name(activation)}"
    return [layer.name for layer in model.layers if layer.name.startswith("block") and layer.name.endswith(suffix)]


def activation_stats(values: np.ndarray, family: str | None) -> dict:
    """Mean, std, saturated and dead fractions of one layer's activations (last axis = units).

    ``saturated``: share of values with ``|a| > 0.97`` for tanh, ``|2a - 1| > 0.97`` for
    sigmoid (the same point of the curve), NaN for other families. ``dead``: share of units
    that output <= 0 for every sample (and position) of `values`, for the ReLU family; NaN
    otherwise. `family` is what ``keras_bn.activations.activation_family`` returns.
    """
    import keras_bn

    stats = keras_bn.activation_statistics(values, family)  # the callbacks' definitions
    nan = float("nan")
    return {"mean": float(stats["mean"]), "std": float(stats["std"]),
            "saturated": float(stats.get("saturation", nan)), "dead": float(stats.get("dead_fraction", nan))}


def kernel_gradient_norms(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict:
    """The L2 norm of the loss gradient for each Dense/Conv kernel, on one batch in training mode
    (`training_pass`'s ``"grad_norms"``)."""
    return training_pass(model, x, y)["grad_norms"]


def training_pass(model: keras.Model, x: np.ndarray, y: np.ndarray, layer_names: Sequence[str] = ()) -> dict:
    """One training-mode forward and backward pass of a Functional `model` on the batch `x`, `y`.

    The cross-entropy of the model's softmax output, as ``fit`` would use it; BatchNorm's
    moving statistics are restored afterwards, so the model is left as it was.

    Returns:
        ``{"loss": float, "grad_norms": {kernel layer: L2 norm of its kernel's gradient},
        "outputs": {name: numpy output of each layer of `layer_names` in that pass}}``.

    Example::

        start = _common.training_pass(model, x[:32], y[:32], ["stage3_block3_out_relu"])
    """
    import tensorflow as tf

    layers = [layer for layer in model.layers if getattr(layer, "kernel", None) is not None]
    names = list(layer_names)
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output]) if names else model
    with kept_state(model), tf.GradientTape() as tape:
        outputs = probe(x, training=True)
        outputs = list(outputs) if names else [outputs]
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, outputs[-1]))
    grads = tape.gradient(loss, [layer.kernel for layer in layers])
    return {"loss": float(loss), "grad_norms": {layer.name: float(tf.norm(g)) for layer, g in zip(layers, grads)},
            "outputs": {n: keras.ops.convert_to_numpy(o) for n, o in zip(names, outputs)}}


@contextlib.contextmanager
def kept_state(model: keras.Model):
    """Restore `model`'s non-trainable variables (BatchNorm's moving statistics) on exit,
    so that calls with ``training=True`` outside ``fit`` leave no trace.

    Example::

        with kept_state(model):
            train_mode_probs = model(x_batch, training=True)
    """
    saved = [v.numpy() for v in model.non_trainable_variables]
    try:
        yield model
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)


def finish_figure(fig, axes, path: Path, legend_fontsize=None) -> Path:
    """Grid and legend on each of `axes`, then `save_figure`: how every recipe ends a plot."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_fontsize)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"figure: {path}")
    return path


def main(name: str, description: str, add_arguments: Callable, run: Callable, argv=None) -> dict:
    """Parse `argv` with the shared and the recipe's options, seed, and run the recipe in a
    fresh folder (printed first); returns the recipe's results with ``"log_dir"`` added."""
    import sys

    import matplotlib

    matplotlib.use("Agg")
    parser = base_parser(name, description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.log_dir = args.log_dir or "logs"
    folder = recipe_dir(args, name)
    print(f"{name}: writing to {folder}", flush=True)
    with strategy_scope(args):
        set_seed(args.seed)
        start = time.perf_counter()
        results = run(args)
    if isinstance(results, dict):
        results.setdefault("log_dir", str(folder))
    print(f"{name}: done in {time.perf_counter() - start:.1f} s; results in {folder}; "
          f"TensorBoard: keras-bn tensorboard {Path(args.log_dir) / name}")
    return results
