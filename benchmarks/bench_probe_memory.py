"""Peak memory of one ActivationStats read against its budget `max_probe_mb`, on a conv net.

Each setting runs in a fresh process (``ru_maxrss`` only grows): build a conv net on 32x32x3
inputs (three conv/BN/ReLU stages, 64-128 channels: about 1.3 MiB of layer outputs per
sample, of which ActivationStats watches the ReLUs), prepare the callback and read the probe
twice. The figure is the peak RSS of that process minus the peak RSS of the same run with a
1-sample probe (same arrays allocated, same model, same traced function), against the budget:
the target (issue #16.3) is <= 1.25 x `max_probe_mb` at budgets of 64 and 256 MiB.

Usage::

    python benchmarks/bench_probe_memory.py                 # budgets 64 and 256 MiB, 512 samples
    python benchmarks/bench_probe_memory.py --budgets 64 --samples 256
    python benchmarks/bench_probe_memory.py --model wide    # 12 watched elementwise layers
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile


def child(budget_mb: float, samples: int, total: int, model_name: str = "conv") -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import resource
    import warnings

    import keras
    import numpy as np

    from keras_bn import callbacks as kbc

    keras.utils.set_random_seed(0)
    if model_name == "conv":
        inputs = keras.Input((32, 32, 3))
        h = inputs
        for stage, channels in enumerate((64, 64, 128)):
            h = keras.layers.Conv2D(channels, 3, padding="same", name=f"conv{stage}")(h)
            h = keras.layers.BatchNormalization(name=f"bn{stage}")(h)
            h = keras.layers.ReLU(name=f"relu{stage}")(h)
            if stage:
                h = keras.layers.MaxPooling2D(name=f"pool{stage}")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
    else:  # "wide": 12 watched elementwise layers of 256 KiB per sample each (bench_memory.py's)
        inputs = keras.Input((128, 512))
        h = inputs
        for k in range(12):
            h = keras.layers.Activation("tanh" if k % 2 else "relu", name=f"act{k}")(h)
            h = keras.layers.Rescaling(1.01, name=f"scale{k}")(h)
        h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(h))
    x = np.random.default_rng(0).standard_normal((total, *inputs.shape[1:]), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        callback = kbc.ActivationStats(tempfile.mkdtemp(prefix="bench_probe_"), x[:samples], figures=False,
                                       max_probe_samples=max(samples, 1), max_probe_mb=budget_mb)
        callback.set_model(model)
    for _ in range(2):
        callback._results()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{peak_mib:.1f} {callback._chunk_rows}")


def run(budget_mb: float, samples: int, total: int, model_name: str) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(budget_mb), str(samples), str(total), model_name],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    return float(out[-2]), int(out[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[64.0, 256.0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--model", choices=("conv", "wide"), default="conv")
    args = parser.parse_args(argv)
    print(f"probe of {args.samples} samples, {args.model} model; peak RSS minus a 1-sample probe's")
    print(f"{'max_probe_mb':>12} {'rows/chunk':>10} {'peak MiB':>9} {'1-sample':>9} {'delta':>8} {'delta/budget':>12}")
    worst = 0.0
    for budget in args.budgets:
        peak, rows = run(budget, args.samples, args.samples, args.model)
        base, _ = run(budget, 1, args.samples, args.model)
        ratio = (peak - base) / budget
        worst = max(worst, ratio)
        print(f"{budget:12.0f} {rows:10d} {peak:9.1f} {base:9.1f} {peak - base:8.1f} {ratio:12.2f}x")
    print(f"worst delta/budget: {worst:.2f}x (target <= 1.25x)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(main())
