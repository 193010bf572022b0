"""Train-step time of a build_resnet model vs the same net written by hand in Keras.

Both nets are the CIFAR ResNet-20 (BN, ReLU, option A shortcuts) with identical layers and
parameter count; the hand-written one uses plain Keras layers and a Lambda for the shortcut.
Rounds alternate between the two (so machine load hits both alike); the ratio is the median
of the per-round ratios of seconds per step, in wall time and in the process's CPU time
(the one to read on a shared machine). Target: <= 1.02x.

Usage::

    python benchmarks/bench_resnet.py                    # ResNet-20, 28x28x1, batch 128
    python benchmarks/bench_resnet.py --depth 56 --rounds 9 --steps 10
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

import keras_bn


def hand_written_resnet(input_shape, depth: int, num_classes: int, widths=(16, 32, 64)) -> keras.Model:
    """ResNet (He et al. 2015, CIFAR) as one would write it with Keras layers only."""
    n = (depth - 2) // 6

    def shortcut(x, filters, strides):
        if strides == 1 and x.shape[-1] == filters:
            return x
        extra = filters - x.shape[-1]
        return keras.layers.Lambda(
            lambda t: keras.ops.pad(t[:, ::strides, ::strides, :], [[0, 0], [0, 0], [0, 0], [0, extra]]))(x)

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=False, kernel_initializer="he_normal")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for stage, width in enumerate(widths):
        for block in range(n):
            strides = 2 if stage > 0 and block == 0 else 1
            y = keras.layers.Conv2D(width, 3, strides=strides, padding="same", use_bias=False,
                                    kernel_initializer="he_normal")(x)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
            y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(y)
            y = keras.layers.BatchNormalization()(y)
            x = keras.layers.ReLU()(keras.layers.Add()([shortcut(x, width, strides), y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Activation("softmax", dtype="float32")(keras.layers.Dense(num_classes)(x))
    return keras.Model(inputs, outputs)


def seconds_per_step(model, x, y, batch_size: int, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process) per training step."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(x[: batch_size * steps], y[: batch_size * steps], batch_size=batch_size, epochs=1, verbose=0,
              shuffle=False)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    shape = (28, 28, 1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size * args.steps, *shape)).astype("float32")
    y = rng.integers(0, 10, size=len(x))
    models = {"build_resnet": keras_bn.build_resnet(shape, args.depth, 10),
              "hand-written": hand_written_resnet(shape, args.depth, 10)}
    assert models["build_resnet"].count_params() == models["hand-written"].count_params()
    for model in models.values():
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
        seconds_per_step(model, x, y, args.batch_size, 2)  # trace and warm up
    times = {name: [] for name in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for name in order:
            times[name].append(seconds_per_step(models[name], x, y, args.batch_size, args.steps))
    result = {}
    for k, clock in enumerate(("wall", "CPU")):
        ratios = [a[k] / b[k] for a, b in zip(times["build_resnet"], times["hand-written"])]
        result[clock] = float(np.median(ratios))
        per_step = ", ".join(f"{name} {np.median([t[k] for t in values]) * 1e3:.1f} ms" for name, values in times.items())
        print(f"{clock:>4} time per step: {per_step}; ratio build_resnet / hand-written {result[clock]:.3f}x "
              f"(median of {args.rounds} per-round ratios, range {min(ratios):.3f}-{max(ratios):.3f})")
    print(f"target <= 1.02x; ResNet-{args.depth}, batch {args.batch_size}, {args.steps} steps per round, "
          f"{models['build_resnet'].count_params()} parameters each. On a shared machine read the CPU ratio: "
          "the process's CPU seconds do not count the time other processes hold the cores.")
    return {"ratio": result, "times": times}


if __name__ == "__main__":
    main()
