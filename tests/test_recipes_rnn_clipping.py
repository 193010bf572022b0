from pathlib import Path

import numpy as np
import pytest

from keras_bn.recipes import rnn_clipping
from tests._events import scalar_series


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


def test_quick_run_clips_as_configured(tmp_path, capsys):
    # A threshold below every gradient norm: both clipping runs clip at every step.
    results = rnn_clipping.main(["--quick", "--clip", "0.01", "--log-dir", str(tmp_path)])
    summary = results["summary"]
    assert list(summary) == ["none", "clipnorm", "global_clipnorm"]
    assert summary["none"]["clip_fraction"] == 0.0
    assert summary["clipnorm"]["clip_fraction"] == 1.0
    assert summary["global_clipnorm"]["clip_fraction"] == 1.0
    for variant in summary:
        assert summary[variant]["runs"] == 1 and summary[variant]["median"] > 0.01
    norms = {r["variant"]: r["norms"] for r in results["results"]}
    applied = scalar_series(str(Path(results["log_dir"]) / "global_clipnorm_seed0" / "train"), "grad_global/norm")
    assert applied and max(applied.values()) <= 0.01 * (1 + 1e-4)
    preclip = scalar_series(str(Path(results["log_dir"]) / "global_clipnorm_seed0" / "train"), "grad_global/norm_preclip")
    assert min(preclip.values()) > 0.01
    np.testing.assert_allclose(norms["global_clipnorm"], [preclip[s] for s in sorted(preclip)], rtol=1e-6)
    assert (Path(results["log_dir"]) / "rnn_clipping.png").stat().st_size > 10_000
    assert "| global_clipnorm | 0/1" in capsys.readouterr().out
    assert summary["none"]["mean_error"] == next(r["final_error"] for r in results["results"] if r["variant"] == "none")
