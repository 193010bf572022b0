"""The first `fit` of a new model with the diagnostics preset vs a bare one: tracing included.

A new model's first fit is mostly tracing. Builds a fresh ResNet-20 (BN, 28x28x1 inputs) per
call, taking turns between bare and the preset (`figures=False`: the figure is not part of the
step), and times a 2-step `fit(epochs=1)`, wall and process CPU. The first pair warms up the
process (imports, TensorFlow's own caches) and is left out. Prints each median and the ratio
preset / bare.

Usage::

    python benchmarks/bench_first_fit.py              # 4 pairs, about a minute
    python benchmarks/bench_first_fit.py --pairs 8 --depth 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402


def first_fit(config: str, depth: int, x, y, root: str) -> tuple[float, float]:
    keras.utils.set_random_seed(0)
    model = keras_bn.build_resnet(x.shape[1:], depth, 10)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = kbc.diagnostics(tempfile.mkdtemp(dir=root), every=100, figures=False) if config == "preset" else []
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the doctor's findings on 2 steps are not the point here
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--depth", type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=len(x))
    root = tempfile.mkdtemp(prefix="bench_first_fit_")
    times = {"bare": [], "preset": []}
    for pair in range(args.pairs + 1):
        for config in (("bare", "preset") if pair % 2 else ("preset", "bare")):
            measured = first_fit(config, args.depth, x, y, root)
            if pair > 0:
                times[config].append(measured)
        print(f"  pair {pair}/{args.pairs} done", flush=True)
    print(f"first fit of a new ResNet-{args.depth} (2 steps of 32), {args.pairs} pairs; keras {keras.__version__}, "
          f"{keras.backend.backend()}")
    median = {c: (statistics.median(w for w, _ in v), statistics.median(c_ for _, c_ in v)) for c, v in times.items()}
    for config, (wall, cpu) in median.items():
        print(f"{config:<8} wall {wall:6.2f} s   cpu {cpu:6.2f} s")
    print(f"preset / bare: wall {median['preset'][0] / median['bare'][0]:.2f}x, cpu {median['preset'][1] / median['bare'][1]:.2f}x")


if __name__ == "__main__":
    main()
