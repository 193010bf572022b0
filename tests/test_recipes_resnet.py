"""Quick-mode tests of the residual recipes (degradation, norm_free): each runs its quick mode
once, checks what it must still show and the runs it declares healthy or faulty
(`tests._recipe_doctor.check_declared_runs`)."""

import math
from pathlib import Path

import numpy as np
import pytest

from keras_bn.recipes import degradation, norm_free
from tests._recipe_doctor import check_declared_runs

QUICK = ["--quick", "--dataset", "fashion_mnist_small"]


def test_degradation_compares_plain_and_residual_twins(tmp_path, capsys):
    results = degradation.main([*QUICK, "--log-dir", str(tmp_path)])
    out = capsys.readouterr().out
    check_declared_runs(degradation, results)
    runs = results["runs"]
    assert list(runs) == ["plain8", "plain14", "resnet8", "resnet14"]
    for depth, blocks in ((8, 3), (14, 6)):
        assert runs[f"plain{depth}"]["params"] == runs[f"resnet{depth}"]["params"]  # option A twins
        for kind in ("plain", "resnet"):
            r = runs[f"{kind}{depth}"]
            assert len(r["response_std"]) == blocks and all(s > 0 for s in r["response_std"])
            assert len(r["train_error"]) == 2 and all(0 <= e <= 1 for e in r["train_error"])
            assert all(np.isfinite(r["grads_start"])) and r["grads_start"][0] > 0  # BN keeps every gradient alive
            assert list((Path(results["log_dir"]) / f"{kind}{depth}" / "train").glob("events.out.tfevents.*"))
    assert isinstance(results["plain_degrades"], bool) and "paper's ordering:" in out
    assert (Path(results["log_dir"]) / "degradation.png").stat().st_size > 10_000


def test_downsample_averages_2x2_blocks():
    x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(degradation.downsample(x, 2)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_norm_free_shows_why_default_init_fails(tmp_path, capsys):
    results = norm_free.main([*QUICK, "--log-dir", str(tmp_path)])
    out = capsys.readouterr().out
    check_declared_runs(norm_free, results)
    init = {variant: r["init"] for variant, r in results["runs"].items()}
    # The quick mode still shows the claim, in its own words: default starts out of range.
    assert results["default_out_of_range"] and results["identity_starts_near_ln_c"]
    assert results["text"] in out and "NOT" not in results["text"]
    assert list(init) == ["bn", "default", "zero_init", "fixup"]
    # Without a norm, every He-initialized block adds its branch to the sum, so the signal grows
    # block after block (6 blocks here), while zero-init and Fixup blocks start as identities.
    assert init["default"]["last_block_std"] > 2 * init["zero_init"]["last_block_std"]
    assert init["default"]["last_block_std"] > 2 * init["fixup"]["last_block_std"]
    assert abs(init["fixup"]["loss"] - math.log(10)) < 1e-5  # zero classifier: a uniform softmax
    for variant in ("bn", "zero_init", "fixup"):
        assert np.isfinite(results["runs"][variant]["loss"][-1])



def test_norm_free_says_what_its_numbers_show():
    def runs(default_loss, default_std):
        return {"default": {"init": {"loss": default_loss, "last_block_std": default_std}},
                "zero_init": {"init": {"loss": 2.31, "last_block_std": 0.5}},
                "fixup": {"init": {"loss": math.log(10), "last_block_std": 0.4}}}

    held = norm_free.what_it_shows(runs(11.6, 4.0), 10, depth=20)
    assert held["default_out_of_range"] and held["growth"] == pytest.approx(8.0)
    assert "11.6 = 5.0x ln(10)" in held["text"] and "8.0x zero_init's" in held["text"] and "NOT" not in held["text"]
    weak = norm_free.what_it_shows(runs(3.0, 0.8), 10, depth=14)  # 3.0 < 1.5 ln(10): within the check
    assert not weak["default_out_of_range"] and weak["growth"] == pytest.approx(1.6)
    assert "NOT the claim" in weak["text"] and "6 blocks are too few" in weak["text"]
    wrong = norm_free.what_it_shows({**runs(11.6, 4.0), "fixup": {"init": {"loss": 9.0, "last_block_std": 3.0}}}, 10, 20)
    assert not wrong["identity_starts_near_ln_c"] and "(NOT near ln(C))" in wrong["text"]
