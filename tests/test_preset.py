"""Tests for keras_bn/callbacks/preset.py beyond the tags it writes (tests/test_callbacks.py):
the log folder is checked for writing once per preset, however many callbacks share it."""

from __future__ import annotations

import numpy as np
import pytest

from keras_bn import callbacks as kbc
from keras_bn.callbacks import _runs


def _count_write_checks(monkeypatch) -> list:
    calls = []
    real = _runs.check_writable_log_dir

    def counting(log_dir):
        calls.append(log_dir)
        return real(log_dir)

    monkeypatch.setattr(_runs, "check_writable_log_dir", counting)
    return calls


def test_the_preset_checks_its_log_dir_for_writing_once(tmp_path, monkeypatch):
    calls = _count_write_checks(monkeypatch)
    callbacks = kbc.diagnostics(str(tmp_path / "run"), probe=np.zeros((4, 3), "float32"), bn_check=True,
                                update_ratio=True)
    assert len(callbacks) >= 5 and calls == [str(tmp_path / "run")]
    assert {c.log_dir for c in callbacks} == {str(tmp_path / "run")}
    calls.clear()
    kbc.GradientNorms(str(tmp_path / "alone"))  # a callback with writers of its own checks for itself
    assert calls == [str(tmp_path / "alone")]


def test_an_unwritable_log_dir_still_fails_at_the_preset(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("the user's file")
    with pytest.raises(ValueError, match=r"`log_dir` cannot be created.*Received: log_dir="):
        kbc.diagnostics(str(blocker / "run"))
    assert blocker.read_text() == "the user's file"


class _TrainingClock:
    """A clock for the preset's `ReadBudget`: each batch of training advances it by 1 s and each
    `GradientNorms` read by 3 s, so the budget's decisions depend on nothing but the steps."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fit_with_budget(tmp_path, monkeypatch, share, x, y, name):
    import keras

    import keras_bn
    from keras_bn.events import read_run

    clock = _TrainingClock()
    real_log_step = kbc.GradientNorms._log_step

    def expensive_log_step(self, step):
        clock.now += 3.0
        return real_log_step(self, step)

    monkeypatch.setattr(kbc.GradientNorms, "_log_step", expensive_log_step)

    class Ticks(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            clock.now += 1.0

    model = keras_bn.build_dense((4,), [6], 2)
    model.compile("adam", "sparse_categorical_crossentropy")
    callbacks = kbc.diagnostics(str(tmp_path / name), every=1, figures=False, doctor=False, bn_check=False,
                                max_read_overhead=share)
    if share is not None:
        callbacks[0].read_budget.clock = clock
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[Ticks()] + callbacks)
    kbc.close_all_writers()
    return read_run(str(tmp_path / name / "train")), callbacks


def test_the_read_budget_skips_the_same_steps_for_every_callback_and_the_counts_cover_them(tmp_path, monkeypatch):
    # 20 steps; from step 12 on every gradient is NaN (a NaN sample), 8 non-finite steps.
    x = np.linspace(-1, 1, 160, dtype="float32").reshape(40, 4)
    x[24] = np.nan
    y = np.arange(40) % 2
    exact, _ = _fit_with_budget(tmp_path, monkeypatch, None, x, y, "exact")
    budgeted, callbacks = _fit_with_budget(tmp_path, monkeypatch, 0.5, x, y, "budgeted")
    budget = callbacks[0].read_budget
    assert all(c.read_budget is budget for c in callbacks[:3])  # MetricsLogger, GradientNorms, UpdateRatio
    steps = {tag: [s for s, _ in budgeted[tag]] for tag in ("batch_loss", "grad_global/norm", "nonfinite/grad_steps")}
    assert [s for s, _ in exact["batch_loss"]] == list(range(1, 21))  # no budget: every step
    read = steps["batch_loss"]
    assert steps["grad_global/norm"] == steps["nonfinite/grad_steps"] == read  # one answer for all of them
    assert read[:2] == [1, 2] and read[-1] == 20  # the first two always, the epoch end always
    # Each read step costs 3 s and a step 1 s: at 0.5 the next read waits >= 6 s since the last.
    assert all(b - a >= 3 for a, b in zip(read[1:-1], read[2:-1])), read
    assert budget.skipped_steps > 0 and budget.read_steps + budget.skipped_steps == 20  # 1..19, and 20 by UpdateRatio's snapshot at 19
    # Update ratios are measured only before steps that are read (and at the epoch end).
    assert {s for s, _ in budgeted["update_ratio/block1_dense"]} <= set(read)
    # The non-finite steps between two reads are counted at the next read, skipped steps included.
    assert sum(v for _, v in budgeted["nonfinite/grad_steps"]) == sum(v for _, v in exact["nonfinite/grad_steps"]) == 8


def test_max_read_overhead_is_checked_by_name(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="max_read_overhead"):
        kbc.diagnostics(str(tmp_path / "a"), max_read_overhead=0.0)
    monkeypatch.undo()  # conftest turns the budget off for the other tests
    callbacks = kbc.diagnostics(str(tmp_path / "b"))
    assert callbacks[0].read_budget.max_overhead == 0.01
    assert kbc.diagnostics(str(tmp_path / "c"), max_read_overhead=None)[0].read_budget is None
    # Multi-worker training: the workers' reads must not depend on their speed.
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}')
    assert kbc.diagnostics(str(tmp_path / "d"))[0].read_budget is None
