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
