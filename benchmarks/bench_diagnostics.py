"""Overhead of keras_bn.callbacks vs bare `model.fit` and Keras' TensorBoard callback.

Trains the 784-32-32-10 MLP and the small CNN in one process, alternating the
configurations within each repeat (so the load of other processes hits all of them alike),
and prints the median ratio of epoch time to the bare fit's. Each run builds a fresh model
and times its second epoch (the first includes tracing); epoch-end work of the callbacks
(figures, epoch summaries) is inside the timed epoch.

Usage::

    python benchmarks/bench_diagnostics.py                  # alternating repeats (3): about 10 minutes
    python benchmarks/bench_diagnostics.py --quick          # smoke run, about 2 minutes
    python benchmarks/bench_diagnostics.py --interleaved 24 # bare and instrumented fits taking turns
                                                            # epoch by epoch, with an A/A control: 19 min
    python benchmarks/bench_diagnostics.py --step-cost 400  # the taps' per-step cost alone: 3 minutes

Every mode first prints how many graph nodes the preset adds to the traced training step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402

CONFIGS = (
    "bare", "preset", "preset_figures_every_epoch", "grad_norms_every_100", "grad_norms_every_1",
    "keras_tb_hist0", "keras_tb_hist1",
)
INTERLEAVED_CONFIGS = ("bare_again", "preset", "grad_norms_every_100")


class EpochTimer(keras.callbacks.Callback):
    """Wall and process CPU time of each epoch, from epoch begin until every other callback's epoch end."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.times.append((time.perf_counter() - self._start[0], time.process_time() - self._start[1]))


def make_callbacks(config: str, log_dir: str, probe) -> list:
    if config in ("bare", "bare_again"):  # bare_again: the A/A control of --interleaved
        return []
    if config == "preset":
        return kbc.diagnostics(log_dir, probe=probe)  # default cadence
    if config == "preset_figures_every_epoch":
        return kbc.diagnostics(log_dir, probe=probe, figure_secs=0)
    if config == "grad_norms_every_100":
        return [kbc.GradientNorms(log_dir, every=100, figures=False)]
    if config == "grad_norms_every_1":
        return [kbc.GradientNorms(log_dir, every=1, figures=False)]
    if config == "keras_tb_hist0":
        return [keras.callbacks.TensorBoard(log_dir, histogram_freq=0)]
    if config == "keras_tb_hist1":
        return [keras.callbacks.TensorBoard(log_dir, histogram_freq=1)]
    raise ValueError(f"`config` must be one of: {', '.join(map(repr, CONFIGS))}. Received: config={config!r}")


def epoch_time(build, x, y, config: str, batch_size: int) -> float:
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as log_dir:
        callbacks = make_callbacks(config, log_dir, x[:256]) + [timer]
        model.fit(x, y, batch_size=batch_size, epochs=2, verbose=0, callbacks=callbacks)
    return timer.times[-1]


def bench(name: str, build, x, y, repeats: int, batch_size: int) -> dict:
    times = {c: [] for c in CONFIGS}  # config -> [(wall, cpu) per repeat]
    for repeat in range(repeats):
        order = CONFIGS[repeat % len(CONFIGS):] + CONFIGS[: repeat % len(CONFIGS)]
        for config in order:
            times[config].append(epoch_time(build, x, y, config, batch_size))
        print(f"  {name}: repeat {repeat + 1}/{repeats} done", flush=True)
    bare_wall = statistics.median(w for w, _ in times["bare"])
    steps = int(np.ceil(len(x) / batch_size))
    print(f"\n{name}: {steps} steps/epoch, bare epoch median {bare_wall:.2f} s "
          f"({1000 * bare_wall / steps:.2f} ms/step), {repeats} alternating repeats")
    ratios = {}
    for config in CONFIGS[1:]:
        row = []
        for kind, index in (("wall", 0), ("cpu", 1)):
            per_repeat = [t[index] / b[index] for t, b in zip(times[config], times["bare"])]
            ratios[config, kind] = statistics.median(per_repeat)
            row.append(f"{kind} {ratios[config, kind]:.3f}x ({' '.join(f'{r:.2f}' for r in per_repeat)})")
        print(f"  {config:27s} " + "   ".join(row))
    return ratios


class Turns:
    """Two fits in two threads take turns, one epoch each (`--interleaved`)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.turn, self.done = 0, [False, False]

    def wait(self, me: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == me or self.done[1 - me])

    def hand_over(self, me: int, finished: bool = False) -> None:
        with self.cond:
            self.done[me] = self.done[me] or finished
            self.turn = 1 - me
            self.cond.notify_all()


class TurnTimer(EpochTimer):
    """EpochTimer that waits for its turn before an epoch and hands over after it."""

    def __init__(self, turns: Turns, me: int):
        super().__init__()
        self.turns, self.me = turns, me

    def on_epoch_begin(self, epoch, logs=None):
        self.turns.wait(self.me)
        super().on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.turns.hand_over(self.me)

    def on_train_end(self, logs=None):
        self.turns.hand_over(self.me, finished=True)


def interleaved(name: str, build, x, y, config: str, epochs: int, batch_size: int) -> tuple:
    """Bare and `config` fit in two threads, alternating epoch by epoch: each round's two epochs
    are seconds apart, so the machine's slow swings cancel in the per-round ratio."""
    turns = Turns()
    timers = [TurnTimer(turns, 0), TurnTimer(turns, 1)]
    with tempfile.TemporaryDirectory() as log_dir:
        models = []
        for cfg in ("bare", config):
            keras.utils.set_random_seed(0)
            model = build()
            model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
            models.append(model)
        jobs = [
            threading.Thread(target=model.fit, args=(x, y), kwargs=dict(
                batch_size=batch_size, epochs=epochs, verbose=0,
                callbacks=make_callbacks(cfg, os.path.join(log_dir, cfg), x[:256]) + [timer]))
            for model, cfg, timer in zip(models, ("bare", config), timers)
        ]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
    bare, other = timers[0].times[1:], timers[1].times[1:]  # epoch 0 traces
    wall = statistics.median(o[0] / b[0] for o, b in zip(other, bare))
    cpu = statistics.median(o[1] / b[1] for o, b in zip(other, bare))
    q = np.percentile([o[1] / b[1] for o, b in zip(other, bare)], [25, 75])
    print(f"  {name:18s} {config:22s} wall {wall:.3f}x   cpu {cpu:.3f}x (IQR {q[0]:.3f}-{q[1]:.3f}), "
          f"{len(bare)} rounds, bare {1000 * statistics.median(b[0] for b in bare) / (len(x) / batch_size):.2f} ms/step",
          flush=True)
    return wall, cpu


def instrumented(build, x, y, config: str, log_dir: str):
    """A compiled, built model with `config`'s callbacks attached by hand, for measurements
    outside ``fit``; returns (model, callbacks, taps): `taps` is the model's `StepTaps`, armed
    once so that its instrumented train function is installed (``model.train_function``)."""
    from keras_bn.callbacks._taps import StepTaps

    keras.utils.set_random_seed(0)
    model = build()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    callbacks = make_callbacks(config, log_dir, x[:32])
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    taps = StepTaps.of(model)
    if callbacks:
        taps.arm()  # what on_train_batch_begin does before each step of a fit
    return model, callbacks, taps


def added_step_ops(name: str, build, x, y) -> None:
    """Ops in the traced training step, bare and with the preset's taps (a count, not a time:
    the MLP's step is mostly per-op overhead, so this is what the taps cost it per step)."""
    import collections

    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(32)
    counts = {}
    for config in ("bare", "preset"):
        with tempfile.TemporaryDirectory() as log_dir:
            model, callbacks, taps = instrumented(build, x, y, config, log_dir)
            for tap in taps.taps:  # the taps' patches are in place only while a step runs (and traces)
                tap.patch()
            try:
                graph = tf.function(model.train_step).get_concrete_function(dataset.element_spec).graph.as_graph_def()
            finally:
                for tap in reversed(taps.taps):
                    tap.unpatch()
            for callback in callbacks:
                callback.on_train_end()
        counts[config] = collections.Counter(n.op for n in graph.node) + collections.Counter(
            n.op for f in graph.library.function for n in f.node_def)
    added = counts["preset"] - counts["bare"]
    print(f"  {name}: training step {sum(counts['bare'].values())} graph nodes bare, preset adds "
          f"{sum(added.values())}: {', '.join(f'{op} {n}' for op, n in sorted(added.items()))}", flush=True)


def step_cost(name: str, build, x, y, rounds: int, steps: int = 25) -> None:
    """The per-step cost of the taps alone: ``model.train_function`` called directly in chunks
    of `steps` steps, bare and with the preset's / GradientNorms' taps installed, all of them
    alternating chunk by chunk. An instrumented step is what ``fit`` runs: ``StepTaps.arm()``
    (the callbacks' ``on_train_batch_begin``), then the wrapper that patches the taps in, calls
    the instrumented traced step and unpatches. No host reads, no other callback work between
    steps: what the taps add to every training step, measured tightly enough to resolve 1%.
    ``preset_graph_only`` calls the preset's traced step directly (no arm, no patching per
    step): the ops the taps add, apart from the wrapper's Python work."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32, drop_remainder=True).repeat().prefetch(2)
    functions = {}
    with tempfile.TemporaryDirectory() as log_dir:
        callbacks = []
        for config in ("bare", "grad_norms_every_100", "preset"):
            model, attached, taps = instrumented(build, x, y, config, os.path.join(log_dir, config))
            callbacks += attached
            function = model.make_train_function() if config == "bare" else model.train_function
            arm = taps.arm if attached else (lambda: None)
            if attached and function is not taps._wrapper:
                raise RuntimeError(f"{config}: the instrumented train function is not installed; the "
                                   "measurement would time a bare step")
            iterator = iter(dataset)
            for _ in range(2 * steps):
                arm()
                function(iterator)
            functions[config] = (function, arm, iterator)
            if config == "preset":  # the preset's traced step alone, without the per-step wrapper
                (_, traced), = taps._traced.values()
                functions["preset_graph_only"] = (traced, lambda: None, iter(dataset))
        times = {config: [] for config in functions}
        for _ in range(rounds):
            for config, (function, arm, iterator) in functions.items():
                start = time.perf_counter()
                for _ in range(steps):
                    arm()
                    logs = function(iterator)
                float(logs["loss"])  # wait for the last step
                times[config].append(time.perf_counter() - start)
        for callback in callbacks:
            callback.on_train_end()  # remove the taps, close the writers
    bare = np.array(times["bare"])
    for config in ("grad_norms_every_100", "preset", "preset_graph_only"):
        t = np.array(times[config])
        print(f"  {name:18s} step cost {config:22s} paired median {np.median(t / bare):.3f}x  "
              f"fastest chunks {t.min() / bare.min():.3f}x  10th percentiles {np.percentile(t, 10) / np.percentile(bare, 10):.3f}x  "
              f"(bare fastest {1000 * bare.min() / steps:.2f} ms/step, {rounds} rounds of {steps} steps)", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few samples and repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--interleaved", type=int, default=0, metavar="EPOCHS",
                        help="instead: bare and each of bare_again (A/A control) / preset / "
                             "grad_norms_every_100 fit in two threads taking turns epoch by epoch, "
                             "for EPOCHS epochs of 600 (MLP) / 300 (CNN) steps")
    parser.add_argument("--step-cost", type=int, default=0, metavar="ROUNDS",
                        help="instead: time the training step alone with and without the taps, "
                             "ROUNDS alternating chunks of 25 steps")
    parser.add_argument("--model", choices=("mlp", "cnn", "both"), default="both", help="which model(s) to time")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    rng = np.random.default_rng(0)
    mlp_n, cnn_n = (6400, 640) if args.quick else (60000, 9600)
    x_mlp = rng.random((mlp_n, 784), dtype=np.float32)
    y_mlp = rng.integers(0, 10, mlp_n)
    x_cnn = rng.random((cnn_n, 28, 28, 1), dtype=np.float32)
    y_cnn = rng.integers(0, 10, cnn_n)
    print(f"keras {keras.__version__}, random data, batch 32")
    models = {  # name, builder, data, steps per epoch with --interleaved
        "mlp": ("MLP 784-32-32-10", lambda: keras_bn.build_dense((784,), [32, 32], 10), x_mlp, y_mlp, 600),
        "cnn": ("CNN [16, 32]", lambda: keras_bn.build_conv((28, 28, 1), [16, 32], 10), x_cnn, y_cnn, 300),
    }
    chosen = [models[m] for m in (("mlp", "cnn") if args.model == "both" else (args.model,))]
    for name, build, x, y, _ in chosen:
        added_step_ops(name, build, x, y)
    for name, build, x, y, interleaved_steps in chosen:
        if args.step_cost:
            step_cost(name, build, x, y, args.step_cost)
        elif args.interleaved:
            n = interleaved_steps * 32
            for config in INTERLEAVED_CONFIGS:
                interleaved(name, build, x[:n], y[:n], config, args.interleaved, 32)
        else:
            bench(name, build, x, y, repeats, 32)


if __name__ == "__main__":
    main()
