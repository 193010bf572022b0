"""keras_bn.lr_find: the range test leaves the model alone and suggests a sane learning rate."""

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from keras_bn import lr_find as lrf
from keras_bn.optimizers import adam

from tests._training_tools_data import mlp, small_data


def test_leaves_weights_and_optimizer_state_unchanged_and_suggests_sane_lr(tmp_path):
    x, y = small_data()
    model = mlp()
    model.compile(optimizer=adam("clip_per_variable"), loss="sparse_categorical_crossentropy")
    model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)  # non-trivial optimizer state
    weights = [w.copy() for w in model.get_weights()]
    opt_state = [np.array(v.numpy()) for v in model.optimizer.variables]
    opt_config = model.optimizer.get_config()

    result = lrf.lr_find(model, (x, y), steps=100, log_dir=tmp_path / "tb", plot_path=tmp_path / "lr.png")

    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    for before, after in zip(opt_state, model.optimizer.variables):
        np.testing.assert_array_equal(before, after.numpy())
    assert model.optimizer.get_config() == opt_config
    assert int(model.optimizer.iterations.numpy()) == 4

    assert 1e-4 <= result.suggestion <= 1e-1
    assert result.rule == "minimum_div_10"
    assert set(result.suggestions) == {"minimum_div_10", "steepest"}
    n = len(result.lrs)
    assert n == len(result.losses) == len(result.smoothed) and 10 < n <= 100
    assert np.all(np.diff(np.log(result.lrs)) == pytest.approx(np.log(1e8) / 99))  # exponential ramp
    assert (tmp_path / "lr.png").stat().st_size > 1000

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"lr_find/loss", "lr_find/smoothed_loss", "lr_find/learning_rate", "lr_find/suggestion"} <= tags
    assert len(acc.Tensors("lr_find/smoothed_loss")) == n


def test_smoothing_is_bias_corrected_ema_and_stops_at_factor():
    x, y = small_data()
    result = lrf.lr_find(lambda: mlp(norm=None), (x, y), steps=60, min_lr=1e-4, max_lr=100.0, beta=0.9)
    expected, avg = [], 0.0
    for i, loss in enumerate(result.losses):
        avg = 0.9 * avg + 0.1 * loss
        expected.append(avg / (1 - 0.9 ** (i + 1)))
    np.testing.assert_allclose(result.smoothed, expected, rtol=1e-6)
    assert result.stopped_at is not None and result.stopped_at == len(result.lrs) - 1
    last = result.smoothed[-1]
    assert not np.isfinite(last) or last > 4 * np.nanmin(result.smoothed[:-1])


def test_rules_are_plain_functions():
    lrs = np.logspace(-5, 0, 11)
    smoothed = np.array([2.3, 2.3, 2.29, 2.25, 2.1, 1.2, 0.6, 0.5, 0.7, 3.0, 9.0])
    assert lrf.minimum_div_10(lrs, smoothed) == pytest.approx(lrs[7] / 10)
    assert lrf.steepest(lrs, smoothed) == pytest.approx(lrs[5])
    assert lrf.RULES.get("minimum/10") is lrf.minimum_div_10


def test_custom_rule_and_bad_arguments():
    x, y = small_data()
    result = lrf.lr_find(mlp, (x[:640], y[:640]), steps=5, rule=lambda lrs, s: 0.123)
    assert result.suggestion == 0.123 and result.rule == "<lambda>"
    with pytest.raises(ValueError, match="steepst"):
        lrf.lr_find(mlp, (x, y), rule="steepst")
    with pytest.raises(ValueError, match="max_lr=1e-08"):
        lrf.lr_find(mlp, (x, y), min_lr=1e-7, max_lr=1e-8)
    with pytest.raises(ValueError, match="steps=1"):
        lrf.lr_find(mlp, (x, y), steps=1)
