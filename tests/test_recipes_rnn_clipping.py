from pathlib import Path

import numpy as np
import pytest

from keras_bn.recipes import rnn_clipping
from tests._events import scalar_series
from tests._recipe_doctor import check_declared_runs


def test_temporal_order_sequences_follow_the_task():
    rng = np.random.default_rng(0)
    x, y = rnn_clipping.temporal_order(500, 50, rng)
    assert x.shape == (500, 50, 6) and x.dtype == np.float32
    np.testing.assert_array_equal(x.sum(-1), 1.0)  # one symbol per step
    symbols = x.argmax(-1)
    for row, label in zip(symbols, y):
        relevant = np.flatnonzero(row < 2)
        assert len(relevant) == 2
        first, second = relevant
        assert 5 <= first < 10 and 25 <= second < 30
        assert label == 2 * row[first] + row[second]
    assert set(np.unique(y)) == {0, 1, 2, 3}


def test_engagement_weights_each_window_by_its_steps():
    # windows of 10, 10 and 5 steps (the last: an epoch end between two reads)
    assert rnn_clipping._engagement([(10, 0.5), (20, 0.0), (25, 1.0)]) == pytest.approx((5 + 0 + 5) / 25)


def test_spike_summary():
    summary = rnn_clipping.spike_summary(np.array([1.0] * 98 + [20.0, np.nan]))
    assert summary["median"] == 1.0 and summary["max"] == 20.0
    assert summary["spikes"] == pytest.approx(1 / 99)


def test_quick_run_unclipped_diverges_global_clipping_trains(tmp_path, capsys):
    """The quick mode's outcome: at lr 0.5 the gradient explodes; without clipping the run
    diverges, with global clipping (the clip binding, the applied norm <= 1) it succeeds."""
    results = rnn_clipping.main(["--quick", "--log-dir", str(tmp_path)])
    check_declared_runs(rnn_clipping, results)
    summary, runs = results["summary"], {r["variant"]: r for r in results["results"]}
    assert list(summary) == ["none", "clipnorm", "global_clipnorm"] and summary["none"]["runs"] == 1
    assert not runs["none"]["success"] and runs["global_clipnorm"]["success"]
    assert summary["none"]["clip_fraction"] == 0.0 and 0.0 < summary["global_clipnorm"]["clip_fraction"] <= 1.0
    train = Path(results["log_dir"]) / "global_clipnorm_seed0" / "train"
    applied, preclip = scalar_series(str(train), "grad_global/norm"), scalar_series(str(train), "grad_global/norm_preclip")
    assert max(applied.values()) <= 1.0 * (1 + 1e-4) < max(preclip.values())
    np.testing.assert_allclose(runs["global_clipnorm"]["norms"], [preclip[s] for s in sorted(preclip)], rtol=1e-6)
    assert (Path(results["log_dir"]) / "rnn_clipping.png").stat().st_size > 10_000
    assert "| global_clipnorm | 1/1" in capsys.readouterr().out
    assert summary["none"]["mean_error"] == runs["none"]["final_error"]


def test_quick_mode_keeps_what_the_user_set():
    args = rnn_clipping._common.base_parser("rnn_clipping", "")
    rnn_clipping.add_arguments(args)
    parsed = args.parse_args(["--quick", "--learning-rate", "0.02", "--seeds", "3"])
    rnn_clipping.apply_quick(parsed)
    assert (parsed.learning_rate, parsed.seeds, parsed.length) == (0.02, 3, rnn_clipping.QUICK["length"])
