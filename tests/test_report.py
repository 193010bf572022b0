import math

import pytest
import tensorflow as tf

from keras_bn import cli
from keras_bn.report import read_run, report


def write_run(log_dir, series):
    writer = tf.summary.create_file_writer(str(log_dir / "train"))
    with writer.as_default():
        for tag, values in series.items():
            for step, value in values:
                tf.summary.scalar(tag, value, step=step)
    writer.close()


def test_healthy_run_has_no_warnings(tmp_path):
    write_run(tmp_path, {
        "grad_norm/block1_dense": [(0, 0.5), (100, 0.4)],
        "grad_norm/block1_bn": [(0, 1e-6), (100, 1e-6)],  # norm layers are left out of the comparison
        "grad_norm/block2_dense": [(0, 0.6), (100, 0.5)],
        "update_ratio/block1_dense": [(100, 1.2e-3)],
        "dead_fraction/block1_relu": [(0, 0.05), (100, 0.1)],
        "activation_std/block1_relu": [(100, 0.8)],
        "activation_std/block2_relu": [(100, 0.7)],
        "dead_fraction/block2_relu": [(100, 0.0)],
    })
    result = report(tmp_path)
    assert result.warnings == []
    assert [r["layer"] for r in result.rows] == ["block1_bn", "block1_dense", "block1_relu", "block2_dense", "block2_relu"]
    row = next(r for r in result.rows if r["layer"] == "block1_dense")
    assert row["grad_final"] == pytest.approx(0.4) and row["grad_max"] == pytest.approx(0.5)


def test_each_problem_gets_its_finding(tmp_path):
    write_run(tmp_path, {
        "grad_norm/block2_dense": [(0, 1e-7)],
        "grad_norm/block10_dense": [(0, 1.0)],
        "dead_fraction/block3_relu": [(0, 0.1), (200, 0.5), (400, 0.62), (500, 0.62)],
        "saturation/block4_tanh": [(0, 0.9)],
        "update_ratio/block2_dense": [(0, 0.3)],
        "update_ratio/block10_dense": [(0, 1e-7)],
        "nonfinite/grad_steps": [(0, 0.0), (100, 3.0)],
    })
    text = "\n".join(report(tmp_path).warnings)
    assert "step 200  block3_relu  dead units 62% (> 40%)" in text
    assert "step 0  block4_tanh  saturated units 90% (> 30%)" in text
    assert "block2_dense  update ratio 3.0e-01 (> 0.01, guide ~1e-3): lower the learning rate" in text
    assert "block10_dense  update ratio 1.0e-07 (< 0.0001, guide ~1e-3): raise the learning rate" in text
    assert "gradient norm at block2_dense is 1.0e-07 of block10_dense's" in text
    assert "NaN/Inf gradients (3 steps counted" in text


def test_collapsing_activations_and_nan_gradients(tmp_path):
    write_run(tmp_path, {
        "activation_std/block1_tanh": [(0, 0.2)],
        "saturation/block1_tanh": [(0, 0.0)],
        "activation_std/block6_tanh": [(0, 1e-4)],
        "saturation/block6_tanh": [(0, 0.0)],
        "grad_norm/block1_dense": [(0, float("nan"))],
        "grad_norm/block2_dense": [(0, 1.0)],
    })
    result = report(tmp_path)
    text = "\n".join(result.warnings)
    assert "activation std at block6_tanh is 0.0005 of block1_tanh's" in text
    assert "NaN/Inf gradients" in text and "block1_dense" in text
    rows = {r["layer"]: r for r in result.rows}
    assert math.isnan(rows["block1_dense"]["grad_final"]) and "grad_final" not in rows["block1_tanh"]
    assert "block1_dense" in str(result)


def test_read_run_and_cli_exit_codes(tmp_path, capsys):
    write_run(tmp_path, {"grad_norm/dense": [(5, 2.0), (1, 1.0)]})
    assert read_run(tmp_path)["grad_norm/dense"] == [(1, 1.0), (5, 2.0)]
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "doctor: no findings" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 3
    assert "no TensorBoard event files" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path), "--max", "0"]) == 2
    assert cli.main(["report", str(tmp_path), "--fail-on", "sometimes"]) == 2


def test_cli_fail_on_levels_and_cap(tmp_path, capsys):
    series = {f"dead_fraction/block{i}_relu": [(10, 0.9)] for i in range(1, 31)}
    series["grad_global/clip_fraction"] = [(100, 0.0), (200, 0.0)]  # an info
    write_run(tmp_path / "warn", series)
    assert cli.main(["report", str(tmp_path / "warn")]) == 0  # warnings only: the default fails on errors
    out = capsys.readouterr().out
    assert "  ... and 20 more warnings" in out and "doctor: 30 warnings, 1 info" in out
    assert cli.main(["report", str(tmp_path / "warn"), "--fail-on", "warning", "--max", "3"]) == 1
    assert "  ... and 27 more warnings" in capsys.readouterr().out
    write_run(tmp_path / "err", {"nonfinite/grad_steps": [(10, 2.0)]})
    assert cli.main(["report", str(tmp_path / "err")]) == 1
    assert cli.main(["report", str(tmp_path / "err"), "--fail-on", "never"]) == 0
    assert "error:\n  step None" not in capsys.readouterr().out


def test_unreadable_files_and_plain_keras_runs_are_named_not_reported_as_healthy(tmp_path, capsys):
    import keras
    import numpy as np

    garbage = tmp_path / "garbage" / "train"
    garbage.mkdir(parents=True)
    (garbage / "events.out.tfevents.1.host.1.0.v2").write_bytes(np.random.default_rng(0).bytes(4096))
    assert cli.main(["report", str(tmp_path / "garbage")]) == 3
    out = capsys.readouterr()
    assert "could not read: " in out.out and "events.out.tfevents.1.host.1.0.v2:0" in out.out
    assert "nothing readable" in out.err

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(np.zeros((8, 3), "float32"), np.zeros(8, "int32"), epochs=2, verbose=0,
              callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "plain"))])
    code = cli.main(["report", str(tmp_path / "plain")])
    out = capsys.readouterr().out
    assert "not a keras-bn diagnostics run (plain Keras TensorBoard run)" in out
    assert code in (0, 3) and "warnings: none" not in out


def test_a_folder_of_runs_is_reported_run_by_run_and_side_by_side(tmp_path, capsys):
    import json

    invocation = tmp_path / "recipe" / "20261201-120000"
    for run, norm in (("no_bn", 1e-7), ("with_bn", 0.5)):
        write_run(invocation / run, {"grad_norm/block1_dense": [(0, norm), (100, norm)],
                                     "grad_norm/logits": [(0, 0.5), (100, 0.5)]})
    (invocation / "keras-bn-invocation.json").write_text(json.dumps({"started": 1.0}))
    cli.main(["report", str(tmp_path / "recipe")])
    out = capsys.readouterr().out
    assert "showing the newest" in out
    assert out.count("keras-bn report: ") == 2 and "runs side by side" in out
    table = out[out.index("runs side by side"):]
    assert "| no_bn" in table and "| with_bn" in table
