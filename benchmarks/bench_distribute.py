"""Steps per second of the 784-64-64-10 sync-BN MLP: one device vs MirroredStrategy on 2 logical
CPU devices, each bare and with the keras-bn diagnostics preset (every=10, probe of 256).

A correctness run on 2 shared CPU cores, not a speed claim: both logical devices share the
same cores, so the mirrored numbers show the cost of the replica machinery, not a speed-up.
Configurations alternate within each repeat; each run builds a fresh model, traces in a first
epoch and times the second.

Usage::

    python benchmarks/bench_distribute.py            # about 3 minutes on 2 busy cores
    python benchmarks/bench_distribute.py --repeats 1 --steps 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import distribute  # noqa: E402


def steps_per_second(strategy, diagnostics: bool, steps: int, batch: int, x, y) -> float:
    with distribute.scope(strategy):
        model = keras_bn.build_dense((784,), [64, 64], 10, norm="sync_batch")
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch, drop_remainder=True)
    with tempfile.TemporaryDirectory() as log_dir:
        callbacks = keras_bn.callbacks.diagnostics(log_dir, probe=x[:256], every=10, figures=False) if diagnostics else []
        timer = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.append(time.perf_counter() - self.start)

        model.fit(dataset, steps_per_epoch=steps, epochs=2, verbose=0, callbacks=[*callbacks, Timer()])
    return steps / timer[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--batch", type=int, default=256, help="global batch size")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 784)).astype("float32")
    y = rng.integers(0, 10, size=4096).astype("int32")
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    configs = {
        "1 device, bare": (None, False),
        "1 device, diagnostics": (None, True),
        "mirrored x2, bare": (mirrored, False),
        "mirrored x2, diagnostics": (mirrored, True),
    }
    results = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, (strategy, diag) in configs.items():
            results[name].append(steps_per_second(strategy, diag, args.steps, args.batch, x, y))
    print(f"global batch {args.batch}, {args.steps} timed steps, median of {args.repeats}")
    print("| configuration | steps/s | vs bare, same strategy |")
    print("|---|---|---|")
    for name, values in results.items():
        bare = statistics.median(results[name.replace("diagnostics", "bare")])
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / bare:.2f}x |")


if __name__ == "__main__":
    main()
