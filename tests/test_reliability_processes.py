"""Issue 9: training processes killed by SIGTERM / SIGKILL, and two runs sharing a log root.

Each test starts real child processes (tests/_reliability_child.py), bounds their time and
kills them in ``finally``."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keras_bn.report import read_run
from tests._events import strict_steps

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 90.0
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kills child processes with SIGKILL/SIGTERM, which only POSIX systems have")


def start(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen([sys.executable, "-m", "tests._reliability_child", *map(str, args)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in process.stdout], daemon=True).start()
    return process, lines


def wait_for(lines, predicate, deadline):
    """Collect stdout lines until `predicate(seen)` holds; fail at `deadline`."""
    seen = []
    while not predicate(seen):
        try:
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            pytest.fail(f"child did not get there in time; saw {seen[-3:]}")
    return seen


def last(seen, prefix):
    return max(int(line.split()[1]) for line in seen if line.startswith(prefix))


def stop(process):
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def test_sigkill_loses_nothing_before_the_last_flush(tmp_path):
    process, lines = start("forever", tmp_path, "--flush-secs", "0.25")
    try:
        deadline = time.monotonic() + TIMEOUT
        seen = wait_for(lines, lambda s: sum(l.startswith("FLUSHED") for l in s) >= 2, deadline)
        process.kill()
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        seen += [line for line in iter(lambda: lines.get(timeout=1) if not lines.empty() else None, None)]
        flushed = last(seen, "FLUSHED")  # the epoch end at this step flushed before it printed
        steps, tail = strict_steps(tmp_path / "train")  # every complete record passes its CRCs
        logged = sorted(steps["grad_global/norm"])
        assert logged[:flushed] == list(range(1, flushed + 1))  # nothing up to the flush is missing
        assert len(logged) == len(set(logged))
        assert tail < 200  # at most one record cut short by the kill
        assert read_run(tmp_path)["grad_global/norm"][flushed - 1][0] == flushed  # TensorBoard loads it
    finally:
        stop(process)


def test_sigterm_closes_the_writers_so_unflushed_steps_survive(tmp_path):
    # flush_secs=60: without the SIGTERM handler nothing after the last epoch end would be on disk.
    process, lines = start("forever", tmp_path, "--flush-secs", "60")
    try:
        deadline = time.monotonic() + TIMEOUT
        seen = wait_for(lines, lambda s: any(l.startswith("FLUSHED") for l in s)
                        and sum(l.startswith("STEP") for l in s) >= last(s, "FLUSHED") + 8, deadline)
        printed = last(seen, "STEP")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGTERM  # still dies of SIGTERM after closing
        steps, tail = strict_steps(tmp_path / "train")
        assert tail == 0  # closed: no partial record
        logged = sorted(steps["grad_global/norm"])
        # Step n is logged when step n+1 begins; everything up to the last printed step - 1 is there,
        # well past the last epoch-end flush.
        assert logged[: printed - 1] == list(range(1, printed))
        assert logged[-1] >= printed - 1 > last(seen, "FLUSHED")
    finally:
        stop(process)


def test_two_processes_sharing_a_log_root_get_distinct_complete_runs(tmp_path):
    children = [start("short", tmp_path) for _ in range(2)]
    try:
        deadline = time.monotonic() + TIMEOUT
        runs = []
        for process, lines in children:
            runs.append(wait_for(lines, lambda s: any(l.startswith("RUN") for l in s), deadline)[-1].split(" ", 1)[1])
            assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
        assert len(set(runs)) == 2 and {Path(r).parent for r in runs} == {tmp_path}
        pids = {str(p.pid) for p, _ in children}
        assert {Path(r).name.split("-")[1] for r in runs} == pids  # <name>-<pid>-<n>
        for run in runs:
            steps, tail = strict_steps(Path(run) / "train")
            assert tail == 0
            assert sorted(steps["grad_global/norm"]) == list(range(1, 11))  # 2 epochs x 5 steps
            assert sorted(steps["epoch_loss"]) == [0, 1]
            assert [s for s, _ in read_run(run)["activation_mean/dense"]] == list(range(1, 11))
    finally:
        for process, _ in children:
            stop(process)


FIGURE_AT_EXIT = """
import sys, threading
import numpy as np, keras
from keras_bn import callbacks as kbc, events
gate, original = threading.Event(), kbc.GradientNorms._draw
def gated(self, step):  # the train-end figure is drawn only after fit has returned
    gate.wait(60)
    original(self, step)
kbc.GradientNorms._draw = gated
inputs = keras.Input((4,))
model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(6, activation="relu")(inputs)))
model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
x, y = np.random.default_rng(0).normal(size=(32, 4)).astype("float32"), np.arange(32) % 3
callback = kbc.GradientNorms(sys.argv[1], every=2, figures=True, figure_secs=3600)
model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
tags = {v.tag for path in events.event_files(sys.argv[1] + "/train") for _, e in events.iter_events(path) for v in e.summary.value}
print("figure on disk when fit returned:", "figures/grad_norms" in tags)
gate.set()  # and exit at once: the interpreter's exit completes the file
"""


def test_the_train_end_figure_drawn_after_fit_returned_is_in_the_file_at_process_exit(tmp_path):
    """Issue 17 item 9: ``fit`` does not wait for the train-end figure; the process's exit does."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", FIGURE_AT_EXIT, str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "figure on disk when fit returned: False"
    steps, tail = strict_steps(tmp_path / "train")
    assert tail == 0 and steps["figures/grad_norms"] == [4]  # the final state, at the last step
    assert sorted(steps["grad_global/norm"]) == [2, 4]
