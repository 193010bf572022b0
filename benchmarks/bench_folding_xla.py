"""Folded vs unfolded through XLA on CPU: the vectorized epilogues and the latency ratio.

XLA already fuses inference BN into the elementwise loop after each convolution, so through
XLA folding can only make that loop cheaper: ``max(conv * scale + shift, 0)`` becomes
``max(conv + bias, 0)``. On the small CNN the cheaper loop is the slower one at default
settings: over 32 channels its body is small enough for LLVM's full-unroll pass to unroll the
channel loop into 32 scalar statements before the loop vectorizer runs, and the SLP
vectorizer does not pack them again, so the folded model's largest elementwise loop runs
scalar (the unfolded one's, with the bigger body, is left to the vectorizer). Any Keras
``Conv2D(32, activation="relu")`` compiles to that same loop.

This script shows it and measures it. For each LLVM setting (XLA's defaults, then the
full-unroll cap that XLA_FLAGS can pass to LLVM) a child process builds the small CNN
(``keras_bn.build_conv((28, 28, 1), [32, 64], 10)``, BN statistics randomized), folds it,
compiles both with ``tf.function(jit_compile=True)`` at batch 256 and

- counts the vector instructions in the optimized LLVM IR of each convolution's epilogue
  kernel (from ``--xla_dump_to``): 0 means that loop runs scalar;
- times alternating single calls of the unfolded model, a clone of it (A/A control: the
  harness's own bias) and the folded model; each ratio is the median over rounds of
  unfolded time / other time (> 1: the other is faster), with its interquartile range.

Usage::

    python benchmarks/bench_folding_xla.py               # about 1.5 minutes on 2 cores
    python benchmarks/bench_folding_xla.py --rounds 30   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

SETTINGS = {
    "XLA defaults": "",
    "LLVM full unroll <= 16": "--xla_backend_extra_options=-unroll-full-max-count=16",
}


def _epilogue_vector_counts(hlo_dump: pathlib.Path) -> list[int]:
    """Vector instructions in the optimized IR of each fusion that reads a convolution."""
    prefix = hlo_dump.name.removesuffix("cpu_after_optimizations.txt")
    fusions = re.findall(r"%(\S+) = \S+ fusion\([^)]*%convolution", hlo_dump.read_text())
    return [(hlo_dump.parent / f"{prefix}{name}_kernel_module.ir-with-opt.ll").read_text().count(" x float>")
            for name in fusions]


def _inference(model):
    return lambda t: model(t, training=False)


def child(rounds: int, dump_dir: str) -> dict:
    """Compile, inspect and time the three programs in this process (XLA_FLAGS set by the parent)."""
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_bn
    from bench_folding import _randomize_bn

    keras.utils.set_random_seed(0)
    cnn = keras_bn.build_conv((28, 28, 1), [32, 64], 10)
    _randomize_bn(cnn)
    clone = keras.models.clone_model(cnn)
    clone.set_weights(cnn.get_weights())
    models = {"unfolded": cnn, "unfolded_again": clone, "folded": keras_bn.fold_batchnorm(cnn)}
    x = tf.constant(np.random.default_rng(0).random((256, 28, 28, 1), dtype=np.float32))

    fns, vectors, seen = {}, {}, set()
    for name, model in models.items():
        fns[name] = tf.function(_inference(model), jit_compile=True)
        fns[name](x).numpy()  # compiles: this model's program is the module dumped now
        (module,) = set(pathlib.Path(dump_dir).glob("*cpu_after_optimizations.txt")) - seen
        seen.add(module)
        vectors[name] = _epilogue_vector_counts(module)
    for fn in fns.values():
        fn(x).numpy(), fn(x).numpy()

    times = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):  # one call each, the order rotated every round
        for name in order[r % len(order):] + order[:r % len(order)]:
            start = time.perf_counter()
            fns[name](x).numpy()
            times[name].append(time.perf_counter() - start)
    base = np.array(times["unfolded"])
    result = {"vectors": vectors, "ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()}}
    for name in ("unfolded_again", "folded"):
        ratios = base / np.array(times[name])
        result[name] = [float(np.median(ratios)), *map(float, np.percentile(ratios, [25, 75]))]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="alternating rounds per setting")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dump-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.rounds, args.dump_dir)))
        return

    print(f"small CNN [32, 64] at batch 256 through tf.function(jit_compile=True), {args.rounds} rounds "
          "a setting; epilogue vector instructions per convolution (0: the loop runs scalar)", flush=True)
    rows = []
    for setting, llvm_flag in SETTINGS.items():
        with tempfile.TemporaryDirectory() as dump_dir:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                       XLA_FLAGS=f"--xla_dump_to={dump_dir} {llvm_flag}".strip())
            out = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds),
                                  "--dump-dir", dump_dir], env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"child for {setting!r} failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((setting, llvm_flag, res))
        print(f"{setting}: epilogue vectors unfolded {res['vectors']['unfolded']}, folded "
              f"{res['vectors']['folded']}; unfolded {res['ms']['unfolded']:.2f} ms, folded "
              f"{res['ms']['folded']:.2f} ms; folded {res['folded'][0]:.3f}x "
              f"(IQR {res['folded'][1]:.3f}-{res['folded'][2]:.3f}), A/A {res['unfolded_again'][0]:.3f}x",
              flush=True)
    print("\n| setting | epilogue vectors unfolded / folded | unfolded ms | folded ms | A/A control | "
          "folded vs unfolded (IQR) |\n|---|---|---|---|---|---|")
    for setting, llvm_flag, res in rows:
        aa, fo, v = res["unfolded_again"], res["folded"], res["vectors"]
        name = f"{setting} (`{llvm_flag}`)" if llvm_flag else setting
        print(f"| {name} | {v['unfolded']} / {v['folded']} | {res['ms']['unfolded']:.2f} | "
              f"{res['ms']['folded']:.2f} | {aa[0]:.3f}x | {fo[0]:.3f}x ({fo[1]:.2f}-{fo[2]:.2f}) |")


if __name__ == "__main__":
    main()
