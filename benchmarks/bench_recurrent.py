"""LN-LSTM training-step time against Keras' LSTM, and the diagnostics' cost on a recurrent model.

Both models come from `keras_bn.build_recurrent` at the same size (Fashion-MNIST's shape read
row by row: 28 steps of 28 features, `--units` units, batch `--batch`), on random data. The
configurations take turns within each repeat (so the load of other processes hits all alike);
each builds a fresh model, fits a 10-step warm-up (tracing), then times an epoch of `--steps`
steps (with the callbacks' epoch-end work). Printed: median wall and process-CPU ms per step,
and each ratio against its baseline measured in the same run:

- ``ln_lstm`` / ``lstm``: ``build_recurrent(norm="layer")``, i.e. `keras_bn.LayerNormLSTM` (input
  projection and its LN out of the time loop), against Keras' LSTM (target <= 2x);
- ``ln_lstm_cell`` / ``lstm``: the same weights as ``keras.layers.RNN(LayerNormLSTMCell)``, the
  whole cell in the loop (what ``ln_lstm`` was before the fast layer);
- ``ln_lstm_xla`` / ``lstm_xla``: the same, both compiled with ``jit_compile=True`` (XLA fuses
  the normalizations' elementwise ops);
- ``lstm_preset`` / ``lstm``: ``keras_bn.callbacks.diagnostics`` with a 64-sample probe, every 100;
- ``lstm_preset_timegrad`` / ``lstm``: the same plus `TimeGradients` on the probe, every 100.

``--layer-only`` times the recurrent layer alone instead: forward and backward
(``tf.GradientTape`` in a ``tf.function``, loss = sum of squares of the last state) of Keras'
``LSTM``, ``LayerNormLSTM`` and ``RNN(LayerNormLSTMCell)`` on one (32, 28, 28) batch; the
configurations take turns, each repeat times 15 calls, and the printed figure is the
**minimum** over repeats of the wall time per call (on a shared machine the minimum is the
least disturbed measure of a fixed amount of work), with ratios against ``LSTM``.

Usage::

    python benchmarks/bench_recurrent.py              # 3 repeats x 150 steps: about 8 minutes on a loaded CPU
    python benchmarks/bench_recurrent.py --quick      # smoke run
    python benchmarks/bench_recurrent.py --layer-only --repeats 9   # about a minute
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn  # noqa: E402

CONFIGS = ("lstm", "ln_lstm", "ln_lstm_cell", "lstm_xla", "ln_lstm_xla", "lstm_preset", "lstm_preset_timegrad")
BASELINE = {"lstm_xla": "lstm_xla", "ln_lstm_xla": "lstm_xla"}  # every other config: "lstm"


from bench_diagnostics import EpochTimer  # noqa: E402  (one epoch timer for every benchmark)


def measure(config: str, args, x, y, log_dir: str) -> tuple[float, float]:
    """(wall, cpu) seconds per step of the timed epoch of `config`."""
    keras.backend.clear_session()
    norm = "layer" if config.startswith("ln_lstm") else None
    model = keras_bn.build_recurrent((28, 28), args.units, 10, cell="lstm", norm=norm)
    if config == "ln_lstm_cell":
        inputs = keras.Input((28, 28))
        hidden = keras.layers.RNN(keras_bn.LayerNormLSTMCell(args.units), name="block1_lstm")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", jit_compile=config.endswith("_xla"))
    callbacks = []
    if config.startswith("lstm_preset"):
        run = os.path.join(log_dir, f"{config}_{time.monotonic_ns()}")
        callbacks = keras_bn.callbacks.diagnostics(run, probe=x[:64], every=100)
        if config.endswith("timegrad"):
            callbacks.append(keras_bn.callbacks.TimeGradients(run, (x[:64], y[:64]), every=100,
                                                              writers=callbacks[0].writers))
    timer = EpochTimer()
    model.fit(x[:10 * args.batch], y[:10 * args.batch], batch_size=args.batch, verbose=0, callbacks=callbacks)  # tracing
    model.fit(x, y, batch_size=args.batch, verbose=0, shuffle=False, callbacks=[timer, *callbacks])
    wall, cpu = timer.times[-1]
    return wall / args.steps, cpu / args.steps


def layer_only(args) -> dict:
    """Min over `args.repeats` of the wall ms per forward+backward call of each layer alone."""
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).normal(size=(args.batch, 28, 28)).astype("float32"))
    makers = {"lstm": lambda: keras.layers.LSTM(args.units), "ln_lstm": lambda: keras_bn.LayerNormLSTM(args.units),
              "ln_lstm_cell": lambda: keras.layers.RNN(keras_bn.LayerNormLSTMCell(args.units))}
    calls = {}
    for config, make in makers.items():
        layer = make()
        layer.build(x.shape)

        @tf.function
        def call(inputs, layer=layer):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(layer(inputs, training=True)))
            return tape.gradient(loss, layer.trainable_variables)

        call(x)  # tracing
        calls[config] = call
    times = {config: [] for config in calls}
    for repeat in range(args.repeats):
        for config in (list(calls) if repeat % 2 == 0 else list(calls)[::-1]):
            start = time.perf_counter()
            for _ in range(15):
                calls[config](x)
            times[config].append((time.perf_counter() - start) / 15)
    print(f"\nlayer alone, forward + backward, batch {args.batch}, 28 steps x 28 features, {args.units} units: "
          f"min over {args.repeats} repeats of 15 calls")
    print("| layer | baseline | wall ms/call (min) | wall ms/call (median) | ratio (min) |")
    print("|---|---|---|---|---|")
    result = {}
    for config, values in times.items():
        best, base = min(values), min(times["lstm"])
        result[config] = {"min": best, "ratio": best / base}
        print(f"| {config} | lstm | {best * 1e3:.2f} | {statistics.median(values) * 1e3:.2f} | {best / base:.2f}x |")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=150, help="timed steps per configuration and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--layer-only", action="store_true", help="time the recurrent layers alone (see the docstring)")
    args = parser.parse_args(argv)
    if args.layer_only:
        return layer_only(args)
    if args.quick:
        args.steps, args.repeats = 20, 1
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * args.batch, 28, 28)).astype("float32")
    y = rng.integers(0, 10, size=len(x)).astype("int32")
    times = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory() as log_dir:
        for repeat in range(args.repeats):
            order = CONFIGS if repeat % 2 == 0 else CONFIGS[::-1]
            for config in order:
                times[config].append(measure(config, args, x, y, log_dir))
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{c} {times[c][-1][0] * 1e3:.1f} ms" for c in CONFIGS), flush=True)
    medians = {c: (statistics.median(t[0] for t in times[c]), statistics.median(t[1] for t in times[c])) for c in CONFIGS}
    print(f"\nLSTM({args.units}), 28 steps x 28 features, batch {args.batch}, {args.steps} timed steps, "
          f"{args.repeats} repeats (medians); ratios against the baseline of the same run")
    print("| config | baseline | wall ms/step | cpu ms/step | wall ratio | cpu ratio |")
    print("|---|---|---|---|---|---|")
    result = {}
    for config in CONFIGS:
        (wall, cpu), baseline = medians[config], BASELINE.get(config, "lstm")
        base_wall, base_cpu = medians[baseline]
        result[config] = {"wall": wall, "cpu": cpu, "wall_ratio": wall / base_wall, "cpu_ratio": cpu / base_cpu}
        print(f"| {config} | {baseline} | {wall * 1e3:.2f} | {cpu * 1e3:.2f} | {wall / base_wall:.2f}x | {cpu / base_cpu:.2f}x |")
    return result


if __name__ == "__main__":
    main()
