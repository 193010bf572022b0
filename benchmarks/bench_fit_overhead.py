"""The diagnostics preset's fixed cost per `fit` call, after the first call on a model.

Fits the 784-32-32-10 MLP for 20 steps (`fit(epochs=1)`) again and again, taking turns: bare,
the preset with a fresh `diagnostics()` list each call (what a recipe or a search trial does),
and the same list reused. Prints the median wall time of each and the preset's fixed cost
(median preset - median bare), against the target of 50 ms, plus the fastest call (the least
disturbed on a shared machine) and the process CPU time of each call with its figure (less
sensitive to other processes' load than wall time; the CPU of the figure process,
`keras_bn.callbacks._figure_process`, included). `fit` does not wait for the train-end figure: after each timed
call the benchmark waits for it (`keras_bn.events.finish_writes`, untimed, printed as
"figure ms"), so its drawing never lands in the next call's time. The first call of each is
left out (tracing).

Usage::

    python benchmarks/bench_fit_overhead.py            # 15 rounds, about a minute
    python benchmarks/bench_fit_overhead.py --rounds 40
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
from keras_bn import callbacks as kbc  # noqa: E402

try:
    from keras_bn.callbacks._figure_process import child_cpu_seconds  # noqa: E402
except ImportError:  # older keras-bn: figures were drawn in this process
    def child_cpu_seconds() -> float:
        return 0.0

TARGET_MS = 50.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--figures", action="store_true", help="the preset with figures on (default: on)", default=True)
    parser.add_argument("--no-figures", dest="figures", action="store_false")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20 * 32, 784)).astype("float32")
    y = rng.integers(0, 10, size=len(x))
    probe = x[:256]
    models = {}
    for name in ("bare", "fresh_preset", "reused_preset"):
        keras.utils.set_random_seed(0)
        model = keras_bn.build_dense((784,), [32, 32], 10)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        models[name] = model
    root = tempfile.mkdtemp(prefix="bench_fit_overhead_")
    reused = kbc.diagnostics(os.path.join(root, "reused"), probe=probe, every=100, figures=args.figures)
    times = {name: [] for name in models}
    background = {name: [] for name in models}
    cpu = {name: [] for name in models}
    finish_writes = getattr(keras_bn.events, "finish_writes", lambda: None)  # older keras-bn: fit waited
    for round_ in range(args.rounds + 1):
        for name, model in models.items():
            if name == "bare":
                callbacks = []
            elif name == "fresh_preset":
                callbacks = kbc.diagnostics(os.path.join(root, f"fresh{round_}"), probe=probe, every=100, figures=args.figures)
            else:
                callbacks = reused
            start, cpu_start = time.perf_counter(), time.process_time() + child_cpu_seconds()
            model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=callbacks)
            returned = time.perf_counter()
            finish_writes()
            if round_ > 0:  # the first call traces
                times[name].append(returned - start)
                background[name].append(time.perf_counter() - returned)
                cpu[name].append(time.process_time() + child_cpu_seconds() - cpu_start)  # the figure's drawing included
    bare = statistics.median(times["bare"]) * 1e3
    print(f"{args.rounds} rounds of a 20-step fit(epochs=1), MLP 784-32-32-10, figures={args.figures}")
    fastest_bare = min(times["bare"]) * 1e3
    bare_cpu = statistics.median(cpu["bare"]) * 1e3
    print(f"{'config':<16}{'median ms':>10}{'fixed cost ms':>15}{'ratio':>8}{'min ms':>9}{'min - bare':>12}"
          f"{'figure ms':>11}{'cpu ms':>9}{'cpu - bare':>12}")
    for name, values in times.items():
        median, fastest = statistics.median(values) * 1e3, min(values) * 1e3
        cpu_ms = statistics.median(cpu[name]) * 1e3
        print(f"{name:<16}{median:>10.1f}{median - bare:>15.1f}{median / bare:>8.2f}{fastest:>9.1f}"
              f"{fastest - fastest_bare:>12.1f}{statistics.median(background[name]) * 1e3:>11.1f}"
              f"{cpu_ms:>9.1f}{cpu_ms - bare_cpu:>12.1f}")
    worst = max(statistics.median(times[n]) * 1e3 - bare for n in ("fresh_preset", "reused_preset"))
    worst_cpu = max(statistics.median(cpu[n]) * 1e3 - bare_cpu for n in ("fresh_preset", "reused_preset"))
    print(f"fixed cost per fit: {worst:.1f} ms wall (target <= {TARGET_MS:.0f} ms): "
          f"{'met' if worst <= TARGET_MS else 'NOT met'}; {worst_cpu:.1f} ms of process CPU, the figure included")


if __name__ == "__main__":
    main()
