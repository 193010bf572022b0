"""What every recipe shares: options, data, seeding, the run folder, tables and figures.

A recipe module defines ``DESCRIPTION`` (one line), ``add_arguments(parser)`` for its own
options, and ``run(args) -> dict`` that prints a table, writes PNGs to
``<log_dir>/<recipe>/`` and TensorBoard runs to ``<log_dir>/<recipe>/<run>/``, and returns
its measurements. `main` below turns that into a script::

    python -m keras_bn.recipes.bn_vs_no_bn --quick
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras

QUICK_TRAIN_SAMPLES = 2000
QUICK_TEST_SAMPLES = 500


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options every recipe takes."""
    parser = argparse.ArgumentParser(prog=f"keras-bn run {name}", description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings that finish in seconds (smoke tests)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (recipe default)")
    parser.add_argument("--dataset", default="fashion_mnist",
                        help="mnist, fashion_mnist or fashion_mnist_small (default fashion_mnist)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the four IDX .gz files (default: see keras_bn.data.load)")
    parser.add_argument("--log-dir", default="logs", help="root of the output folders (default logs)")
    return parser


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
    """``<log_dir>/<recipe>/``, created."""
    path = Path(args.log_dir) / recipe
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir(args: argparse.Namespace, recipe: str, run: str) -> Path:
    """``<log_dir>/<recipe>/<run>/``, emptied of an earlier run's event files."""
    path = recipe_dir(args, recipe) / run
    if path.exists():
        shutil.rmtree(path)
    return path


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (it reads in a terminal and pastes into docs/RESULTS.md)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) if text else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in text])


class EpochTimer(keras.callbacks.Callback):
    """Records the seconds of each training epoch in `.seconds`."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"figure: {path}")
    return path


def main(name: str, description: str, add_arguments: Callable, run: Callable, argv=None) -> dict:
    """Parse `argv` with the shared and the recipe's options, seed, and run the recipe."""
    import matplotlib

    matplotlib.use("Agg")
    parser = base_parser(name, description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    set_seed(args.seed)
    start = time.perf_counter()
    results = run(args)
    print(f"{name}: done in {time.perf_counter() - start:.1f} s; TensorBoard: keras-bn tensorboard {Path(args.log_dir) / name}")
    return results
