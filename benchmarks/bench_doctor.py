"""The live Doctor's cost on top of the diagnostics preset (target: <= 1.01x epoch time).

Baseline: ``diagnostics(..., doctor=False)``; measured: ``diagnostics(...)`` (the Doctor
appended, as by default), plus an A/A control (the baseline again) that shows the noise of
this machine. The 784-32-32-10 MLP with BatchNormalization (so the Doctor's per-epoch
train/inference gap pass on the 256-sample probe is included) trains on Fashion-MNIST
(the full set from --data-dir when given, else the embedded 6000-image subset). Each
repeat builds fresh models and fits each configuration for `--epochs` epochs in turn; the
first epoch (tracing) is dropped, and the median over the rest of the repeats is compared.
Wall time and process CPU time are both reported (CPU time is steadier on a shared machine),
and, as the direct measure that the load of other processes does not blur, the host time spent
inside the Doctor's hooks and listener over the total epoch time (its in-step cost is one scalar
assign per step).

Usage::

    python benchmarks/bench_doctor.py --repeats 3 --epochs 4 --data-dir ../shared/data/fashion-mnist
    python benchmarks/bench_doctor.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402

CONFIGS = ("preset_without_doctor", "preset_with_doctor", "preset_without_doctor_again")


from bench_diagnostics import EpochTimer  # noqa: E402  (one epoch timer for every benchmark)


def time_doctor_hooks(doctor, spent: list) -> None:
    """Add the wall seconds spent in each of `doctor`'s hooks (and its listener) to ``spent[0]``."""
    for name in ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_epoch_end", "on_train_end", "_listen"):
        method = getattr(doctor, name)

        def timed(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(doctor, name, timed)


def epoch_times(config, data, epochs, log_root, doctor_seconds):
    keras.utils.set_random_seed(0)
    model = keras_bn.build_dense((784,), [32, 32], data.num_classes, norm="batch")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    log_dir = tempfile.mkdtemp(dir=log_root)
    callbacks = kbc.diagnostics(log_dir, probe=data.x_test[:256], doctor=config == "preset_with_doctor")
    if config == "preset_with_doctor":
        doctor = callbacks[-1]
        spent = [0.0]
        time_doctor_hooks(doctor, spent)  # before fit: the listener registered at train begin is the timed one
    timer = EpochTimer()  # last: its epoch end comes after every diagnostics callback's
    model.fit(data.x_train, data.y_train, batch_size=64, epochs=epochs, verbose=0,
              validation_data=(data.x_test, data.y_test), callbacks=[*callbacks, timer])
    if config == "preset_with_doctor":
        doctor_seconds.append((spent[0], sum(w for w, _ in timer.times)))
    return timer.times[1:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="1 repeat of 2 epochs on the embedded subset")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs, args.data_dir = 1, 2, None
    name = "fashion_mnist" if args.data_dir else "fashion_mnist_small"
    raw = keras_bn.data.load(name, args.data_dir)
    x_train, x_test = keras_bn.data.standardize(raw.x_train, raw.x_test, flatten=True)
    data = raw._replace(x_train=x_train, x_test=x_test)
    times = {config: [] for config in CONFIGS}
    doctor_seconds = []  # (seconds in the Doctor's hooks, seconds of all epochs) per fit
    with tempfile.TemporaryDirectory() as log_root:
        for repeat in range(args.repeats):
            for config in CONFIGS:
                times[config] += epoch_times(config, data, args.epochs, log_root, doctor_seconds)
                print(f"repeat {repeat + 1}/{args.repeats} {config}: "
                      + ", ".join(f"{w:.2f} s" for w, _ in times[config][-(args.epochs - 1):]), flush=True)
    base_wall = statistics.median(w for w, _ in times[CONFIGS[0]])
    base_cpu = statistics.median(c for _, c in times[CONFIGS[0]])
    print(f"\n{name}, {len(data.x_train)} images, batch 64, {args.repeats} repeats x {args.epochs - 1} timed epochs")
    print("| config | median epoch wall s | ratio (wall) | median epoch CPU s | ratio (CPU) |")
    print("|---|---|---|---|---|")
    for config in CONFIGS:
        wall = statistics.median(w for w, _ in times[config])
        cpu = statistics.median(c for _, c in times[config])
        print(f"| {config} | {wall:.3f} | {wall / base_wall:.3f}x | {cpu:.3f} | {cpu / base_cpu:.3f}x |")
    inside = sum(s for s, _ in doctor_seconds) / sum(e for _, e in doctor_seconds)
    print(f"\nhost time inside the Doctor's hooks: {sum(s for s, _ in doctor_seconds):.3f} s of "
          f"{sum(e for _, e in doctor_seconds):.1f} s of epochs: {1 + inside:.4f}x (the direct measure)")


if __name__ == "__main__":
    main()
