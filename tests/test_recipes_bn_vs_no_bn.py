from pathlib import Path

import numpy as np
import pytest

from keras_bn.recipes import bn_vs_no_bn
from tests._recipe_doctor import check_declared_runs


def test_quick_run_trains_both_models_side_by_side(tmp_path, capsys):
    """Quick mode still shows: both nets learn from the same start; the recipe explains its own
    numbers with BN's measured lag; the doctor finds no error in either run."""
    results = bn_vs_no_bn.main(["--quick", "--dataset", "fashion_mnist_small", "--log-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert results["epochs"] == 2
    for run in ("no_bn", "with_bn"):
        history = results["history"][run]
        assert len(history["loss"]) == 2
        assert history["loss"][1] < history["loss"][0]  # both learn
        assert history["test_accuracy"][-1] > 0.3  # well above chance (0.1) after 2 small epochs
        assert list((Path(results["log_dir"]) / run / "train").glob("events.out.tfevents.*"))
    assert (Path(results["log_dir"]) / "bn_vs_no_bn.png").stat().st_size > 10_000
    assert "| epoch | no_bn train loss | with_bn train loss |" in out
    # The recipe explains its own numbers: one verdict per claim, with BN's measured lag.
    assert "What this run shows (" in out and "BN raises the final test accuracy" in out
    assert results["lag"]["steps"] == 2 * 32 and results["lag"]["memory"] == pytest.approx(100.0)
    from keras_bn.report import read_run

    assert any(tag.startswith("update_ratio/") for tag in read_run(Path(results["log_dir"]) / "with_bn"))
    check_declared_runs(bn_vs_no_bn, results)


def test_both_models_start_from_the_same_kernels():
    models = bn_vs_no_bn.build_models(20, [8, 8], 3)
    for name in ("block1_dense", "block2_dense", "logits"):
        np.testing.assert_array_equal(models["no_bn"].get_layer(name).kernel.numpy(),
                                      models["with_bn"].get_layer(name).kernel.numpy())
    assert "block1_bn" in [layer.name for layer in models["with_bn"].layers]
    assert "block1_bn" not in [layer.name for layer in models["no_bn"].layers]
