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


def test_each_problem_gets_its_warning(tmp_path):
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
    assert "layer block3_relu: 62% dead units since step 200" in text
    assert "layer block4_tanh: 90% of outputs saturated" in text
    assert "layer block2_dense: update ratio 3e-01: learning rate likely too high" in text
    assert "layer block10_dense: update ratio 1e-07: learning rate likely too low" in text
    assert "first layer (block2_dense) 1e-07 of the last (block10_dense): vanishing gradients" in text
    assert "3 steps had NaN/Inf gradients" in text


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
    assert "activation std at the last layer (block6_tanh) is 0.0005 of the first (block1_tanh)" in text
    assert "non-finite gradient norms" in text
    rows = {r["layer"]: r for r in result.rows}
    assert math.isnan(rows["block1_dense"]["grad_final"]) and "grad_final" not in rows["block1_tanh"]
    assert "block1_dense" in str(result)


def test_read_run_and_cli(tmp_path, capsys):
    write_run(tmp_path, {"grad_norm/dense": [(5, 2.0), (1, 1.0)]})
    assert read_run(tmp_path)["grad_norm/dense"] == [(1, 1.0), (5, 2.0)]
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "warnings: none" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "No TensorBoard event files" in capsys.readouterr().err
