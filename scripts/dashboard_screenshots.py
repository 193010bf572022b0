"""Screenshots of a real TensorBoard dashboard of a diagnostics run, for the README.

Trains a deep sigmoid MLP (6 x 100, the BN paper's MLP made deeper, same initial kernels)
without and with BatchNorm for one epoch on the embedded ``fashion_mnist_small`` with
`keras_bn.callbacks.diagnostics`, serves the logs with `keras_bn.cli.tensorboard_server` and
saves headless-Chromium screenshots (the same driver as ``tests/test_browser.py``) of the
scalars, custom-scalars, histograms and images dashboards as ``tensorboard_*.png``.

Usage::

    python scripts/dashboard_screenshots.py                # -> docs/figures/tensorboard_*.png
    python scripts/dashboard_screenshots.py --out /tmp/shots --log-dir /tmp/shots/logs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests._browser

RUNS = {"no_bn": None, "with_bn": "batch"}
DEPTH, WIDTH_UNITS = 6, 100


def train(log_dir: Path, epochs: int = 1, every: int = 5, seed: int = 0) -> list[str]:
    """Train both models into ``<log_dir>/<run>``; return the names of the first and last hidden Dense layers."""
    import keras
    import numpy as np

    import keras_bn
    import keras_bn.callbacks as kbc

    keras.utils.set_random_seed(seed)
    data = keras_bn.data.load("fashion_mnist_small")
    x, x_val = keras_bn.data.standardize(data.x_train, data.x_test, flatten=True)
    models = {run: keras_bn.build_dense((x.shape[1],), [WIDTH_UNITS] * DEPTH, 10, activation="sigmoid",
                                        norm=norm, name=run) for run, norm in RUNS.items()}
    for layer in models["with_bn"].layers:  # same initial kernels
        if layer.name.endswith("_dense") or layer.name == "logits":
            layer.kernel.assign(models["no_bn"].get_layer(layer.name).kernel)
    order = np.random.default_rng(seed).permutation(len(x))
    for run, model in models.items():
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x[order], data.y_train[order], batch_size=60, epochs=epochs, shuffle=False, verbose=0,
                  validation_data=(x_val, data.y_test),
                  callbacks=kbc.diagnostics(str(log_dir / run), probe=x_val[:256], every=every))
    return ["block1_dense", f"block{DEPTH}_dense"]


def capture(log_dir: Path, out: Path, width: int = 1400, height: int = 1000) -> list[Path]:
    """Serve `log_dir` and save the dashboard screenshots to `out`; return their paths."""
    from keras_bn.cli import tensorboard_server
    from tests._browser import Chromium, dashboard_url, scroll_to_text_js

    first, last = "block1_dense", f"block{DEPTH}_dense"
    # (file, dashboard, state in the URL hash, text that must have rendered, chart title to scroll to)
    pages = [
        ("tensorboard_scalars.png", "scalars",
         {"tagFilter": f"^grad_norm/({first}|{last})$|^saturation/", "_smoothingWeight": 0},
         [f"grad_norm/{first}", f"grad_norm/{last}", "no_bn/train", "with_bn/train"], None),
        ("tensorboard_custom_scalars_top.png", "custom_scalars", {"_smoothingWeight": 0},
         ["keras-bn diagnostics", "activation std per layer", "saturation per layer"], None),
        ("tensorboard_custom_scalars.png", "custom_scalars", {"_smoothingWeight": 0},
         ["keras-bn diagnostics", "gradient norm per layer"], "gradient norm per layer"),
        ("tensorboard_histograms.png", "histograms",
         {"tagFilter": f"^activation_hist/block({1}|{DEPTH})_sigmoid$"},
         ["activation_hist/block1_sigmoid", f"activation_hist/block{DEPTH}_sigmoid"], None),
        ("tensorboard_images.png", "images", {"tagFilter": "^figures/grad_norms$"}, ["figures/grad_norms"], None),
    ]
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with tensorboard_server(str(log_dir)) as url, Chromium(width=width, height=height) as browser:
        for name, dashboard, state, expect, scroll_to in pages:
            shot = browser.screenshot_page(dashboard_url(url, dashboard, **state), out / name, expect, timeout=60,
                                           setup_js=scroll_to and scroll_to_text_js(scroll_to))
            print(f"{out / name}: {dashboard} rendered in {shot.seconds:.1f} s")
            saved.append(out / name)
    return saved


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="folder for the PNGs")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs" / "dashboard_screenshots",
                        help="TensorBoard logs (trained unless --no-train)")
    parser.add_argument("--no-train", action="store_true", help="reuse the logs in --log-dir")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.no_train:
        train(args.log_dir, epochs=args.epochs)
    capture(args.log_dir, args.out)


if __name__ == "__main__":
    main()
