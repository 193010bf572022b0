"""The diagnostics preset's cost on JAX vs a bare `model.fit` of the 784-32-32-10 MLP.

Sets ``KERAS_BACKEND=jax`` itself (before Keras is imported). Alternates the configurations
within each repeat (so the load of other processes hits all of them alike), builds a fresh
model per run and times its second epoch (the first includes the jit compilation); the
callbacks' epoch-end work is inside the timed epoch. Three clocks: wall, the process' CPU
(all threads: XLA's and Keras' callback worker too) and the main thread's CPU (Python, the
hooks, the dispatch). ``bare_again`` is an A/A control: its ratio to ``bare`` shows the noise
of the machine. Target: preset <= 1.05x (issue 22).

Usage::

    python benchmarks/bench_jax.py                 # 5 alternating repeats: 4-8 minutes
    python benchmarks/bench_jax.py --quick         # smoke run
    python benchmarks/bench_jax.py --probe         # the preset with a 256-sample probe too
    python benchmarks/bench_jax.py --windows 20    # 20 rounds of 1800-step windows (below): 2-3 minutes
    python benchmarks/bench_jax.py --windows 20 --split   # also GradientNorms without reads: the tap alone
    python benchmarks/bench_jax.py --reads 3       # what each callback's batch hook costs: 20 s
    python benchmarks/bench_jax.py --interleave 150   # short fits alternating (below): 3-5 minutes
    python benchmarks/bench_jax.py --interleave 150 --batch-size 64   # at the MLP recipes' batch size

``--interleave N`` (the tightest): N rounds of 500-step fits of persistent models (4 per
configuration, each continuing its optimizer steps, logs and the preset's read budget, whose
clock counts only that model's fits, so the budget runs as in one long training), timing
batches 50 to 499. The configurations alternate every fit (about 0.3 s), faster than this
machine's load changes (+-20% over a few seconds): the A/A interval is about +-2-3% from 150
rounds, where `--windows` gives +-5-10% from 16-30.

``--windows N``: N rounds of fits of `--window-steps` + 400 steps, a new model for every fit
(the configurations alternating within a round, in a rotating order, so a load change of the
shared machine hits the neighbours alike; the preset without figures); each fit times its
batches 300 to 300 + `--window-steps` (default 1800: 18 reads of every callback at
``every=100``; 100-step windows, one read each, vary by +-20% from fit to fit on this machine);
the ratios are medians of the per-round ratios to ``bare``. No epoch end and no compilation in
the window (the step compiles at batch 0, the callbacks' read functions at the reads of
batches 100 and 101): the steady per-step cost of a long epoch. A new model per fit, because
one model kept for every round carries a speed of its own, +-3-5% between two models of the
same configuration (where its buffers landed); new ones average that out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402

CONFIGS = ("bare", "bare_again", "preset", "grad_norms_every_100")
# `--split`: also GradientNorms with no read inside the window (every=10**9): the tap's per-step
# cost alone, which grad_norms_every_100 minus it splits from the cost of the reads.
SPLIT_CONFIGS = CONFIGS + ("grad_norms_no_reads",)
WINDOW_START = 300  # the first timed batch of a window (`--windows`)


class EpochTimer(keras.callbacks.Callback):
    """Wall, process CPU and main-thread CPU of each epoch, up to every other callback's epoch end."""

    clocks = (time.perf_counter, time.process_time, time.thread_time)

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = [clock() for clock in self.clocks]

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(tuple(clock() - start for clock, start in zip(self.clocks, self._start)))


def make_callbacks(config: str, log_dir: str, probe, figures: bool = True) -> list:
    if config in ("bare", "bare_again"):
        return []
    if config == "preset":
        return kbc.diagnostics(log_dir, probe=probe, figures=figures)  # default cadence (every 100 steps)
    if config == "grad_norms_every_100":
        return [kbc.GradientNorms(log_dir, every=100, figures=False)]
    if config == "grad_norms_no_reads":
        return [kbc.GradientNorms(log_dir, every=10**9, figures=False)]
    raise ValueError(f"`config` must be one of: {', '.join(map(repr, SPLIT_CONFIGS))}. Received: config={config!r}")


def compiled_mlp(seed: int):
    """The benchmark's 784-32-32-10 MLP, compiled with Adam(1e-3), from weights of `seed`."""
    keras.utils.set_random_seed(seed)
    model = keras_bn.build_dense((784,), [32, 32], 10)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def epoch_time(x, y, config: str, probe, batch_size: int = 32) -> tuple:
    model = compiled_mlp(seed=0)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as log_dir:
        model.fit(x, y, batch_size=batch_size, epochs=2, verbose=0,
                  callbacks=make_callbacks(config, log_dir, probe) + [timer])
    return timer.times[-1]


class Window(keras.callbacks.Callback):
    """The three clocks over batches [start, start + steps) of each fit."""

    def __init__(self, steps: int, start: int = WINDOW_START):
        super().__init__()
        self.steps, self.start = steps, start
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.start:
            self._start = [clock() for clock in EpochTimer.clocks]
        elif batch == self.start + self.steps:
            self.times.append(tuple(clock() - start for clock, start in zip(EpochTimer.clocks, self._start)))


def window_times(rounds: int, probe, steps: int, configs=CONFIGS) -> dict:
    rng = np.random.default_rng(0)
    n = (WINDOW_START + steps + 100) * 32
    x, y = rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)
    times = {config: [] for config in configs}
    with tempfile.TemporaryDirectory() as log_dir:
        for repeat in range(rounds):
            for config in configs[repeat % len(configs):] + configs[: repeat % len(configs)]:
                # A new model for every fit (see --windows above).
                model = compiled_mlp(seed=repeat)
                # No figures: drawn at train end on a background thread, they would land in the next
                # fit's window (in a long epoch they are drawn at most once a minute, at an epoch end).
                callbacks = make_callbacks(config, os.path.join(log_dir, f"{config}_{repeat}"), probe, figures=False)
                window = Window(steps)
                model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=callbacks + [window])
                times[config] += window.times
    return times


class FitClock(keras.callbacks.Callback):
    """Wall time spent inside the fits of one model only: given to the preset's `ReadBudget`,
    it sees the short interleaved fits of `--interleave` as one long training."""

    def __init__(self):
        super().__init__()
        self._total, self._start = 0.0, None

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_end(self, logs=None):
        self._total += time.perf_counter() - self._start
        self._start = None

    def __call__(self) -> float:
        return self._total + (time.perf_counter() - self._start if self._start is not None else 0.0)


def interleaved_times(rounds: int, fit_steps: int, configs=CONFIGS, models_per_config: int = 4,
                      batch_size: int = 32) -> dict:
    """Wall times of batches [50, fit_steps - 1) of short fits, the configurations alternating
    every fit (about 0.3 s), so that the machine's load changes, which last seconds, hit them
    alike. Each configuration keeps `models_per_config` models and their callbacks for the whole
    run (round r fits model r % models_per_config, continuing its optimizer steps and logs), so
    the cadence and the read budget run as in one long training."""
    rng = np.random.default_rng(0)
    n = fit_steps * batch_size
    x, y = rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)
    times = {config: [] for config in configs}
    with tempfile.TemporaryDirectory() as log_dir:
        runs = {}
        for config in configs:
            for k in range(models_per_config):
                model = compiled_mlp(seed=k)
                clock = FitClock()
                callbacks = make_callbacks(config, os.path.join(log_dir, f"{config}_{k}"), None, figures=False)
                for callback in callbacks:
                    if getattr(callback, "read_budget", None) is not None:
                        callback.read_budget.clock = clock
                runs[config, k] = (model, [clock] + callbacks)
                model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=runs[config, k][1])  # compiles
        for repeat in range(rounds):
            for config in configs[repeat % len(configs):] + configs[: repeat % len(configs)]:
                model, callbacks = runs[config, repeat % models_per_config]
                window = Window(fit_steps - 51, start=50)
                model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=callbacks + [window])
                times[config] += window.times
            if (repeat + 1) % 50 == 0:
                print(f"  round {repeat + 1}/{rounds}", flush=True)
    return times


TARGET = 1.05  # issue 22: the preset's wall time over a bare fit's


def median_interval(ratios, level: float = 0.95, resamples: int = 4000) -> tuple:
    """A bootstrap interval of the median of `ratios` (the rounds resampled with replacement):
    where the median of another run of as many rounds on this machine would likely fall."""
    draws = np.random.default_rng(0).choice(np.asarray(ratios), (resamples, len(ratios)))
    low, high = np.percentile(np.median(draws, axis=1), [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


MIN_ROUNDS_FOR_VERDICT = 10  # below, a bootstrap of the median is degenerate (2 rounds: 3 possible medians)


def verdict(ratios, judge: bool = True) -> str:
    """The median of the wall ratios with its 95% interval, and (`judge`) whether it meets `TARGET`."""
    low, high = median_interval(ratios)
    if len(ratios) < MIN_ROUNDS_FOR_VERDICT:
        judged = f"no verdict from {len(ratios)} rounds (needs {MIN_ROUNDS_FOR_VERDICT})"
    else:
        judged = "met" if high <= TARGET else "not met" if low > TARGET else "undecided (the interval spans it)"
    return f"{statistics.median(ratios):.3f}x, 95% interval [{low:.3f}, {high:.3f}]" + (
        f": target {TARGET}x {judged}" if judge else "")


def report(times: dict, steps: int) -> None:
    print("\nMLP 784-32-32-10, ms per step (median): " + "; ".join(
        f"{config} " + "/".join(f"{1000 * statistics.median(t[i] for t in times[config]) / steps:.3f}" for i in range(3))
        for config in times) + "  (wall/process CPU/main-thread CPU)")
    configs = [config for config in times if config != "bare"]
    wall_ratios = {}
    for config in configs:
        row = []
        for kind, index in (("wall", 0), ("cpu", 1), ("main", 2)):
            per_repeat = [t[index] / b[index] for t, b in zip(times[config], times["bare"])]
            if kind == "wall":
                wall_ratios[config] = per_repeat
            row.append(f"{kind} {statistics.median(per_repeat):.3f}x ({' '.join(f'{r:.2f}' for r in per_repeat[:10])}"
                       f"{' ...' if len(per_repeat) > 10 else ''})")
        print(f"  {config:22s} " + "   ".join(row))
    if len(times["bare"]) > 1:
        for config, ratios in wall_ratios.items():
            # The fastest windows: the least disturbed by the machine's other load (which only adds).
            fastest = min(t[0] for t in times[config]) / min(t[0] for t in times["bare"])
            print(f"  {config:22s} wall {verdict(ratios, judge=config == 'preset')}; fastest windows {fastest:.3f}x")


def read_times(fits: int, steps: int = 2400) -> None:
    """Print what each of the preset's callbacks costs in its batch hook (``every=100``): the
    wall time of its ``on_train_batch_begin``, where all their per-step work and their reads
    are, timed in the fit past batch `WINDOW_START`, per logging read and in all as a share of
    the bare fits' step time in the same run (`UpdateRatio` also copies the weights one batch
    before each read)."""
    rng = np.random.default_rng(0)
    x, y = rng.random((steps * 32, 784), dtype=np.float32), rng.integers(0, 10, steps * 32)
    hook_seconds, bare_steps = {}, []

    def timed(callback):
        name, hook = type(callback).__name__, callback.on_train_batch_begin

        def on_train_batch_begin(batch, logs=None):
            start = time.perf_counter()
            hook(batch, logs)
            if batch >= WINDOW_START:
                hook_seconds.setdefault(name, []).append(time.perf_counter() - start)

        callback.on_train_batch_begin = on_train_batch_begin
        return callback

    with tempfile.TemporaryDirectory() as log_dir:
        for fit in range(fits):
            window = Window(steps - WINDOW_START - 1)
            compiled_mlp(seed=fit).fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[window])
            bare_steps.append(window.times[0][0] / window.steps)
            callbacks = [timed(c) for c in kbc.diagnostics(os.path.join(log_dir, str(fit)), figures=False)]
            compiled_mlp(seed=fit).fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=callbacks)
    bare = statistics.median(bare_steps)
    reads = fits * (steps - WINDOW_START) // 100
    print(f"bare step {1e6 * bare:.0f} us (median of {fits} fits); each callback's on_train_batch_begin past batch "
          f"{WINDOW_START} ({reads} logging steps): its time per logging step, and in all as a share of the bare steps' time:")
    total = 0.0
    for name, seconds in hook_seconds.items():
        share = sum(seconds) / (len(seconds) * bare)
        total += share
        print(f"  {name:16s} {1e6 * sum(seconds) / reads:6.0f} us per logging step = {100 * share:.2f}%")
    print(f"  {'all':16s} {100 * total:.2f}% of the bare step time")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6400 samples, 1 repeat (smoke run)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--probe", action="store_true", help="give the preset a 256-sample probe")
    parser.add_argument("--windows", type=int, default=0, metavar="N",
                        help="N rounds of timed windows inside fits instead of whole epochs")
    parser.add_argument("--window-steps", type=int, default=1800, metavar="S",
                        help="steps per window (default 1800)")
    parser.add_argument("--split", action="store_true",
                        help="with --windows: also GradientNorms without reads (the tap's per-step cost alone)")
    parser.add_argument("--interleave", type=int, default=0, metavar="N",
                        help="N rounds of short fits of persistent models, alternating every fit")
    parser.add_argument("--fit-steps", type=int, default=500, metavar="S",
                        help="with --interleave: steps per fit (default 500; batches 50 to S-1 are timed)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B",
                        help="with --interleave: the fits' batch size (default 32, Keras' default; the MLP recipes use 64)")
    parser.add_argument("--reads", type=int, default=0, metavar="F",
                        help="F fits timing each preset callback's batch hook, reads included (share of the step time)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be a positive integer. Received: {args.batch_size}")
    if args.reads:
        read_times(args.reads)
        return
    if args.interleave:
        print(f"keras {keras.__version__} on {keras.backend.backend()}, random data, batch {args.batch_size}, "
              f"{args.interleave} rounds of {args.fit_steps}-step fits", flush=True)
        configs = SPLIT_CONFIGS if args.split else CONFIGS
        times = interleaved_times(args.interleave, args.fit_steps, configs, batch_size=args.batch_size)
        report(times, args.fit_steps - 51)
        return
    if args.windows:
        probe = np.random.default_rng(1).random((256, 784), dtype=np.float32) if args.probe else None
        print(f"keras {keras.__version__} on {keras.backend.backend()}, random data, batch 32, "
              f"{args.windows} rounds of {args.window_steps}-step windows", flush=True)
        configs = SPLIT_CONFIGS if args.split else CONFIGS
        report(window_times(args.windows, probe, args.window_steps, configs), args.window_steps)
        return
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
    report(times, n // 32)

if __name__ == "__main__":
    main()
