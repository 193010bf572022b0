"""Tests for keras_bn.callbacks._figure_process: figures drawn in a child process, the same
PNGs as drawn here, and a training process that never waits on (or dies with) the child."""

import io
import subprocess
import sys
import warnings

import matplotlib.image
import numpy as np
import pytest

from keras_bn.callbacks import _figure_process as fp

NORMS = {"block1_dense": 0.3, "block2_dense": 1.5, "logits": 0.02}
HISTOGRAMS = {f"block{i}_relu": (np.linspace(0.0, 1.0 + i, 11), np.arange(10.0) * (i + 1)) for i in range(4)}


@pytest.fixture(autouse=True)
def _fresh_child(monkeypatch):
    """Each test starts from no figure process and stops the one it started."""
    monkeypatch.delenv("KERAS_BN_FIGURE_PROCESS", raising=False)
    monkeypatch.setattr(fp, "_CHILD", fp._Child())
    yield
    fp.close()


def _pixels(png: fp.PNG) -> np.ndarray:
    rgba = matplotlib.image.imread(io.BytesIO(png.data), format="png")
    assert rgba.shape[:2] == (png.height, png.width)
    return rgba


def test_the_child_draws_the_same_png_as_this_process_and_reports_its_cpu():
    for kind, args, kwargs in (("layer_bar_chart", (NORMS,), {"ylabel": "gradient L2 norm", "title": "step 20"}),
                               ("activation_histogram_grid", (HISTOGRAMS,), {"title": "activations, step 20"})):
        drawn_there = fp.draw_png(kind, *args, **kwargs)
        drawn_here = fp._draw_here(kind, args, kwargs)
        assert drawn_there == drawn_here  # byte for byte: same data, same size
        assert _pixels(drawn_there).std() > 0  # a real picture, not a blank canvas
    assert fp._CHILD.process is not None and fp._CHILD.process.poll() is None
    assert fp.child_cpu_seconds() > 0


def test_new_data_gives_a_new_picture_in_the_same_child():
    first = fp.draw_png("layer_bar_chart", NORMS, ylabel="gradient L2 norm")
    process = fp._CHILD.process
    second = fp.draw_png("layer_bar_chart", {**NORMS, "logits": 3.0}, ylabel="gradient L2 norm")
    assert fp._CHILD.process is process  # started once, reused
    assert not np.array_equal(_pixels(first), _pixels(second))


def test_the_child_imports_neither_keras_nor_a_backend():
    code = ("import sys; import keras_bn.callbacks._figure_process, keras_bn.callbacks.figures; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no SIGINT to send to a child process (Ctrl-C there is a console event)")
def test_ctrl_c_is_for_the_training_process_the_child_keeps_drawing():
    import signal

    fp.draw_png("layer_bar_chart", NORMS, ylabel="norm")
    process = fp._CHILD.process
    process.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends to the whole process group
    png = fp.draw_png("layer_bar_chart", NORMS, ylabel="norm")
    assert fp._CHILD.process is process and process.poll() is None
    assert png == fp._draw_here("layer_bar_chart", (NORMS,), {"ylabel": "norm"})


def test_a_figure_with_bad_data_raises_its_error_and_the_child_stays():
    with pytest.raises(RuntimeError, match=r"layer_bar_chart failed in the figure process: ValueError"):
        fp.draw_png("layer_bar_chart", {"dense": "not a number"}, ylabel="norm")
    assert fp._CHILD.unavailable is None
    assert fp.draw_png("layer_bar_chart", NORMS, ylabel="norm").width > 0


def test_a_child_that_dies_warns_once_and_figures_are_drawn_here_from_then_on():
    fp.draw_png("layer_bar_chart", NORMS, ylabel="norm")
    fp._CHILD.process.kill()
    fp._CHILD.process.wait()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = fp.draw_png("layer_bar_chart", NORMS, ylabel="norm")
        again = fp.draw_png("activation_histogram_grid", HISTOGRAMS)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "exited with code -9" in messages[0], messages
    assert png == fp._draw_here("layer_bar_chart", (NORMS,), {"ylabel": "norm"})
    assert again.width > 0 and fp._CHILD.process is None


def test_a_child_that_does_not_answer_is_stopped_and_the_figure_drawn_here(monkeypatch):
    monkeypatch.setattr(fp, "TIMEOUT_SECS", 0.5)
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    monkeypatch.setattr(fp._Child, "_start", lambda self: stuck)
    with pytest.warns(RuntimeWarning, match=r"no answer within 0.5 s"):
        png = fp.draw_png("layer_bar_chart", NORMS, ylabel="norm")
    assert png == fp._draw_here("layer_bar_chart", (NORMS,), {"ylabel": "norm"})
    stuck.kill()
    stuck.wait()


def test_keras_bn_figure_process_0_draws_here_without_a_child(monkeypatch):
    monkeypatch.setenv("KERAS_BN_FIGURE_PROCESS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the user's choice: no warning
        png = fp.draw_png("layer_bar_chart", NORMS, ylabel="norm")
    assert fp._CHILD.process is None and fp.child_cpu_seconds() == 0
    assert png == fp._draw_here("layer_bar_chart", (NORMS,), {"ylabel": "norm"})


def test_an_unknown_figure_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"`kind` must be one of: 'layer_bar_chart', 'activation_histogram_grid', "
                                         r"'time_gradient_chart'. Received: kind='pie_chart'"):
        fp.draw_png("pie_chart", NORMS)
    assert fp._CHILD.process is None  # refused before any process starts
