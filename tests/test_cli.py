import json
import subprocess
import sys
import urllib.request

import pytest

from keras_bn import cli


def test_list_shows_every_recipe_with_a_description(capsys):
    from keras_bn.recipes import RECIPES

    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    assert all(len(line.split(None, 1)[1]) > 20 for line in lines)


def test_unknown_recipe_lists_the_known_ones(capsys):
    assert cli.main(["run", "bn_vs_nobn"]) == 2
    err = capsys.readouterr().err
    assert "`recipe` must be one of: 'bn_vs_no_bn', 'init_study', 'bn_paper_mnist'" in err and "Did you mean 'bn_vs_no_bn'" in err


def test_help_texts(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "list" in out and "run" in out and "tensorboard" in out
    from keras_bn._arg_types import EXIT_CODES

    for code, meaning in EXIT_CODES.items():  # the one exit-code table, in --help
        assert f"{code}  {meaning}" in out


_SYS_MODULES = """
import json, sys
from keras_bn import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["run", "--help"], ["tensorboard", "/nonexistent"]])
def test_help_and_list_leave_tensorflow_and_keras_unimported(argv):
    done = subprocess.run([sys.executable, "-c", _SYS_MODULES, *argv], capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [], result
    assert result["code"] == (2 if "/nonexistent" in argv else 0)


_WITHOUT_JAX = """
import json, sys
from keras_bn import cli
with cli.tensorflow_without_jax():
    try:
        import jax
        inside = "imported"
    except ImportError:
        inside = "blocked"
try:
    import jax
    after = "imported"
except ImportError:
    after = "not installed"
print(json.dumps([inside, after]))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_run_imports_tensorflow_without_jax_and_leaves_jax_importable(backend):
    """`keras-bn run` imports Keras on TensorFlow with ``import jax`` failing (TensorFlow's
    TFLite converter would import JAX, about 1 s of start-up); after that JAX imports as usual,
    and on the JAX backend nothing is blocked."""
    import importlib.util
    import os

    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, "-c", _WITHOUT_JAX], capture_output=True, text=True, timeout=120, env=env)
    inside, after = json.loads(done.stdout.strip().splitlines()[-1])
    if importlib.util.find_spec("jax") is None:
        assert (inside, after) == ("blocked", "not installed")
    else:
        assert (inside, after) == ("blocked" if backend == "tensorflow" else "imported", "imported")


def test_lazy_package_keeps_every_public_name():
    code = ("import sys, keras_bn; assert 'keras' not in sys.modules; "
            "missing = [n for n in keras_bn.__all__ if getattr(keras_bn, n, None) is None]; "
            "print(missing, callable(keras_bn.build_dense), keras_bn.callbacks.diagnostics.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["[]", "True", "diagnostics"], done.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'build_dens'"):
        import keras_bn

        keras_bn.build_dens


@pytest.mark.parametrize("argv, message", [
    (["tensorboard", "/nonexistent"], "argument logdir: must be an existing folder; '/nonexistent' does not exist"),
    (["tensorboard", ".", "--port", "-5"], "argument --port: must be an integer in [1, 65535]. Received: '-5'"),
    (["run", "bn_vs_no_bn", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1. Received: '0'"),
    (["run", "bn_vs_no_bn", "--batch-size", "-5"], "argument --batch-size: must be an integer >= 1. Received: '-5'"),
    (["run", "bn_vs_no_bn", "--learning-rate", "-1"], "argument --learning-rate: must be a finite number > 0. Received: '-1'"),
    (["run", "bn_vs_no_bn", "--learning-rate", "nan"], "argument --learning-rate: must be a finite number. Received: 'nan'"),
    (["run", "bn_vs_no_bn", "--seed", "-3"], "argument --seed: must be an integer in [0, 4294967295]. Received: '-3'"),
    (["run", "bn_vs_no_bn", "--units", "0"], "argument --units: must be an integer >= 1. Received: '0'"),
    (["run", "bn_vs_no_bn", "--epochs", "0"], "argument --epochs: must be an integer >= 1. Received: '0'"),
    (["run", "bn_vs_no_bn", "--dataset", "cifar10"], "argument --dataset: must be one of: mnist, fashion_mnist, fashion_mnist_small. Received: 'cifar10'"),
    (["run", "bn_vs_no_bn", "--data-dir", "/nonexistent"], "argument --data-dir: must be an existing folder; '/nonexistent' does not exist"),
    (["run", "bn_vs_no_bn", "--log-dir", "/proc/forbidden"], "argument --log-dir: must be a folder keras-bn can create; '/proc/forbidden'"),
    (["run", "bn_learning_rate", "--target", "1.5"], "argument --target: must be a number in (0, 1]. Received: '1.5'"),
    (["run", "bn_paper_mnist", "--unit", "100"], "argument --unit: must be an integer in [0, 99]. Received: '100'"),
    (["run", "bn_vs_no_bn", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    *[(["run", recipe, "--batch-size", "0"], "argument --batch-size: must be an integer >= 1. Received: '0'")
      for recipe in ("best_cnn", "degradation", "norm_free", "rnn_clipping", "doctor_demo")],
    (["run", "rnn_clipping", "--clip", "-1"], "argument --clip: must be a finite number > 0. Received: '-1'"),
    (["run", "rnn_layernorm", "--rnn-batch", "0"], "argument --rnn-batch: must be an integer >= 1. Received: '0'"),
])
def test_bad_values_are_one_line_errors_with_exit_code_2(capsys, argv, message):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-bn: error: ") and message in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_a_failing_command_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    from keras_bn.recipes import bn_vs_no_bn

    def broken(args):
        raise RuntimeError("something inside the recipe broke")

    monkeypatch.setattr(bn_vs_no_bn, "run", broken)
    monkeypatch.setattr(bn_vs_no_bn, "main", lambda argv: _common_main(bn_vs_no_bn, broken, argv))
    assert cli.main(["run", "bn_vs_no_bn", "--log-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["keras-bn: error: RuntimeError: something inside the recipe broke "
                                        "(--debug shows the traceback)"]
    assert cli.main(["--debug", "run", "bn_vs_no_bn", "--log-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("something inside the recipe broke")
    assert cli.main(["run", "bn_vs_no_bn", "--log-dir", str(tmp_path), "--debug"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def _common_main(recipe, run, argv):
    from keras_bn.recipes import _common

    return _common.main(recipe.NAME, recipe.DESCRIPTION, recipe.add_arguments, run, argv)
def test_tensorboard_server_serves_on_loopback_and_stops(tmp_path):
    with cli.tensorboard_server(str(tmp_path)) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "data/runs", timeout=30) as response:
            assert response.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "data/runs", timeout=2)


def test_tensorflow_start_notes_are_dropped_and_every_other_stderr_line_kept(capfd):
    import os

    from keras_bn import cli

    with cli.without_tensorflow_start_notes():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:17 port.cc:153] oneDNN custom operations are on. You may see ...\n")
        os.write(2, b"E0000 a real error from C++\n")
        os.write(2, b"a warning\n")
    assert capfd.readouterr().err == "E0000 a real error from C++\na warning\n"
    with pytest.raises(ZeroDivisionError), cli.without_tensorflow_start_notes():
        os.write(2, b"written before the error\n")
        1 / 0
    assert capfd.readouterr().err == "written before the error\n"  # replayed when the block raises too


_SILENT_START = """
from keras_bn import cli
with cli.without_tensorflow_start_notes(), cli.tensorflow_without_jax():
    import keras
    keras.ops.convert_to_numpy(keras.ops.ones(2) + 1)
"""


def test_a_recipe_start_on_tensorflow_shows_none_of_its_start_up_notes():
    """What `keras-bn run` does before a recipe: TensorFlow's C++ start-up notes (absl's preamble,
    the oneDNN line) are not shown. Which notes TensorFlow prints depends on the CPU, so the
    check is against the same start without the filter in the same environment."""
    import os

    from keras_bn import cli

    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    unfiltered = _SILENT_START.replace("cli.without_tensorflow_start_notes(), ", "")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
            for code in (_SILENT_START, unfiltered)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-2000:]
    filtered, plain = (run.stderr.splitlines() for run in runs)
    assert not [line for line in filtered if any(note in line for note in cli.TENSORFLOW_START_NOTES)]
    notes = [line for line in plain if any(note in line for note in cli.TENSORFLOW_START_NOTES)]
    assert len(filtered) == len(plain) - len(notes)  # nothing else was dropped (lines carry timestamps)
