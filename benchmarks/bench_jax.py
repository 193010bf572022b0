"""The diagnostics preset's cost on JAX vs a bare `model.fit` of the 784-32-32-10 MLP.

Sets ``KERAS_BACKEND=jax`` itself (before Keras is imported). Alternates the configurations
within each repeat (so the load of other processes hits all of them alike), builds a fresh
model per run and times its second epoch (the first includes the jit compilation); the
callbacks' epoch-end work is inside the timed epoch. ``bare_again`` is an A/A control: its
ratio to ``bare`` shows the noise of the machine. Target: preset <= 1.05x (issue 22).

Usage::

    python benchmarks/bench_jax.py                 # 5 alternating repeats: 4-8 minutes
    python benchmarks/bench_jax.py --quick         # smoke run
    python benchmarks/bench_jax.py --probe         # the preset with a 256-sample probe too
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_diagnostics import EpochTimer  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402

CONFIGS = ("bare", "bare_again", "preset", "grad_norms_every_100")


def make_callbacks(config: str, log_dir: str, probe) -> list:
    if config in ("bare", "bare_again"):
        return []
    if config == "preset":
        return kbc.diagnostics(log_dir, probe=probe)  # default cadence (every 100 steps)
    if config == "grad_norms_every_100":
        return [kbc.GradientNorms(log_dir, every=100, figures=False)]
    raise ValueError(f"`config` must be one of: {', '.join(map(repr, CONFIGS))}. Received: config={config!r}")


def epoch_time(x, y, config: str, probe, batch_size: int = 32) -> tuple:
    keras.utils.set_random_seed(0)
    model = keras_bn.build_dense((784,), [32, 32], 10)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as log_dir:
        model.fit(x, y, batch_size=batch_size, epochs=2, verbose=0,
                  callbacks=make_callbacks(config, log_dir, probe) + [timer])
    return timer.times[-1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6400 samples, 1 repeat (smoke run)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--probe", action="store_true", help="give the preset a 256-sample probe")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    rng = np.random.default_rng(0)
    n = 6400 if args.quick else 60000
    x, y = rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)
    probe = x[:256] if args.probe else None
    print(f"keras {keras.__version__} on {keras.backend.backend()}, random data, batch 32, "
          f"{n // 32} steps/epoch, probe: {'256 samples' if probe is not None else 'none'}", flush=True)
    for config in ("bare", "preset"):  # warm-up: the process' first fits pay one-time costs
        epoch_time(x[:3200], y[:3200], config, probe)
    times = {c: [] for c in CONFIGS}
    for repeat in range(repeats):
        order = CONFIGS[repeat % len(CONFIGS):] + CONFIGS[: repeat % len(CONFIGS)]
        for config in order:
            times[config].append(epoch_time(x, y, config, probe))
        print(f"  repeat {repeat + 1}/{repeats} done", flush=True)
    bare = statistics.median(w for w, _ in times["bare"])
    print(f"\nMLP 784-32-32-10: bare epoch median {bare:.2f} s ({1000 * bare / (n // 32):.3f} ms/step)")
    for config in CONFIGS[1:]:
        row = []
        for kind, index in (("wall", 0), ("cpu", 1)):  # cpu: the process' CPU time, all its threads
            per_repeat = [t[index] / b[index] for t, b in zip(times[config], times["bare"])]
            row.append(f"{kind} {statistics.median(per_repeat):.3f}x ({' '.join(f'{r:.2f}' for r in per_repeat)})")
        print(f"  {config:22s} " + "   ".join(row))


if __name__ == "__main__":
    main()
