"""Inference latency of BN-folded vs unfolded models, in one process.

For the small CNN (keras_bn.build_conv((28, 28, 1), [32, 64], 10)) and MobileNetV2
(weights=None, alpha=0.35, 32x32 by default: XLA on CPU is very
slow on its depthwise convolutions, about 20 s a batch of 256 at 96x96), at batch 1 and 256, through eager ``model(x)`` calls,
``model.predict``, a plain ``tf.function`` and an XLA-compiled ``tf.function``. Unfolded and
folded runs alternate in short rounds (about 20 ms a side: a few calls, or one call where a
call takes longer), as many rounds as fit in `--budget` seconds; the ratio is the median over
rounds of unfolded time / folded time (> 1: folding is faster). It also prints the
instruction counts of the XLA-optimized HLO of both models, the deterministic side of the
XLA figure: XLA already fuses BN into the convolution's epilogue, so folding can only remove
instructions there, never add work (benchmarks/bench_folding_xla.py explains the small CNN's
2-3% through XLA: an LLVM unroll heuristic, and the option that removes it).

Usage::

    python benchmarks/bench_folding.py              # about 5 minutes on 2 cores
    python benchmarks/bench_folding.py --quick      # fewer rounds, a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn.folding import fold_batchnorm  # noqa: E402
from xla_counts import xla_opcode_counts  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)

ROUND_S = 0.02  # seconds per side of an alternating round


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.5, c))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))
            layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            layer.beta.assign(rng.normal(0.0, 0.5, c))


def _graph_ops(model, x):
    fn = tf.function(lambda t: model(t, training=False))
    return len(fn.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph.get_operations())


def _callers(model, x):
    xt = tf.constant(x)
    plain = tf.function(lambda t: model(t, training=False))
    xla = tf.function(lambda t: model(t, training=False), jit_compile=True)
    return {
        "eager": lambda: model(xt, training=False),
        "predict": lambda: model.predict(x, batch_size=len(x), verbose=0),
        "tf.function": lambda: plain(xt),
        "xla": lambda: xla(xt),
    }


def _time_per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    np.asarray(out)  # wait for the result
    return (time.perf_counter() - start) / calls


def bench(name, model, folded, batch, min_rounds, budget_s):
    x = np.random.default_rng(1).normal(size=(batch, *model.inputs[0].shape[1:])).astype("float32")
    a, b = _callers(model, x), _callers(folded, x)
    rows = []
    for mode in a:
        for fn in (a[mode], b[mode]):  # warm up, trace and compile
            fn(), fn()
        once = max(_time_per_call(a[mode], 3), 1e-6)
        calls = max(1, int(ROUND_S / once))  # calls per side of a round (~ROUND_S seconds)
        rounds = max(min_rounds, int(budget_s / (2 * calls * once)))
        times_a, times_b, ratios = [], [], []
        for r in range(rounds):  # alternate, starting side swapped each round
            if r % 2 == 0:
                ta, tb = _time_per_call(a[mode], calls), _time_per_call(b[mode], calls)
            else:
                tb, ta = _time_per_call(b[mode], calls), _time_per_call(a[mode], calls)
            times_a.append(ta), times_b.append(tb), ratios.append(ta / tb)
        # The ratio is the median of per-round ratios: the two sides of a round are a few
        # milliseconds apart and share the load of the (shared) machine, so drifts cancel.
        ta, tb, ratio = statistics.median(times_a), statistics.median(times_b), statistics.median(ratios)
        q1, q3 = np.percentile(ratios, [25, 75])
        rows.append((name, batch, mode, ta * 1e3, tb * 1e3, ratio, rounds, q1, q3))
        print(f"{name:12s} batch {batch:3d}  {mode:11s}  unfolded {ta * 1e3:9.3f} ms  "
              f"folded {tb * 1e3:9.3f} ms  ratio {ratio:5.3f}x  (IQR {q1:.3f}-{q3:.3f}, "
              f"{rounds} rounds x {calls} calls)", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="least alternating rounds per figure")
    parser.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: TF default)")
    parser.add_argument("--size", type=int, default=32, help="MobileNetV2 input size (>= 32)")
    parser.add_argument("--budget", type=float, default=8.0, help="seconds per (model, batch, mode)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 s each: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.budget = 3, 0.5

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(0)
    cnn = keras_bn.build_conv((28, 28, 1), [32, 64], 10)
    mnv2 = keras.applications.MobileNetV2(input_shape=(args.size, args.size, 3), alpha=0.35, weights=None,
                                          include_top=False, pooling="avg")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs visible, "
          f"TF threads: {args.threads or 'default'}, at least {args.rounds} rounds and {args.budget:g} s "
          f"per figure, MobileNetV2 {args.size}x{args.size}")
    rows = []
    for name, model in (("small_cnn", cnn), ("mobilenetv2", mnv2)):
        _randomize_bn(model)
        folded, report = fold_batchnorm(model, return_report=True)
        x1 = np.zeros((1, *model.inputs[0].shape[1:]), "float32")
        diff = np.max(np.abs(np.asarray(model(x1 + 0.5)) - np.asarray(folded(x1 + 0.5))))
        print(f"{name}: {len(report.folded)} BN folded, {len(report.skipped)} kept; graph ops "
              f"{_graph_ops(model, x1)} -> {_graph_ops(folded, x1)}; max |diff| {diff:.2e}")
        hlo_a, hlo_b = xla_opcode_counts(model, x1), xla_opcode_counts(folded, x1)
        heavy = ("convolution", "dot", "custom-call")
        print(f"{name}: XLA-optimized HLO instructions {sum(hlo_a.values())} -> {sum(hlo_b.values())}; "
              + ", ".join(f"{op} {hlo_a[op]} -> {hlo_b[op]}" for op in heavy))
        for batch in (1, 256):
            rows += bench(name, model, folded, batch, args.rounds, args.budget)
    print("\n| model | batch | call | unfolded ms | folded ms | ratio (IQR over rounds) | rounds |\n"
          "|---|---|---|---|---|---|---|")
    for name, batch, mode, ta, tb, ratio, rounds, q1, q3 in rows:
        print(f"| {name} | {batch} | {mode} | {ta:.3f} | {tb:.3f} | {ratio:.2f}x ({q1:.2f}-{q3:.2f}) | {rounds} |")


if __name__ == "__main__":
    main()
