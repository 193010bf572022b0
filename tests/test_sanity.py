"""keras_bn.sanity: each check passes a healthy model and catches the broken one it is for."""

import math

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from keras_bn import sanity
from keras_bn.optimizers import adam

from tests._training_tools_data import mlp, small_data


def hot_mlp():
    model = mlp()
    model.compile(optimizer=adam(learning_rate=10.0), loss="sparse_categorical_crossentropy")
    return model


def test_initial_loss_passes_fresh_softmax_model():
    x, y = small_data()
    result = sanity.check_initial_loss(mlp(norm=None), x[:500], y[:500])
    assert result.passed
    assert result.expected == pytest.approx(math.log(10)) and result.num_classes == 10
    assert abs(result.loss - math.log(10)) < 0.5 * math.log(10)


def test_initial_loss_fails_with_huge_last_layer():
    x, y = small_data()
    model = mlp()
    kernel = model.get_layer("logits").kernel
    kernel.assign(kernel * 100.0)
    result = sanity.check_initial_loss(model, x[:500], y[:500])
    assert not result.passed
    assert result.loss > 5 * math.log(10)


def test_overfit_succeeds_on_healthy_model():
    x, y = small_data()
    result = sanity.check_overfit(mlp, x, y, n=20, max_steps=200)
    assert result.passed and result.n == 20
    assert 1 <= result.steps <= 200
    assert result.accuracy == 1.0 and result.loss <= 0.05


def test_overfit_fails_with_zero_init():
    x, y = small_data()
    result = sanity.check_overfit(lambda: mlp(initializer="zeros"), x, y, n=20, max_steps=60)
    assert not result.passed and result.steps is None
    assert result.accuracy < 0.5 and result.loss > 1.0


def test_regularization_raises_loss_by_the_penalty():
    x, y = small_data()
    result = sanity.check_regularization_raises_loss(mlp, x, y, l2=1e-2)
    assert result.passed
    assert result.regularized_loss - result.loss == pytest.approx(result.expected_penalty, rel=0.01)
    assert result.expected_penalty > 0


def test_loss_guard_stops_lr_10_in_first_epoch(tmp_path):
    x, y = small_data()
    x, y = x[:1280], y[:1280]
    model = hot_mlp()
    guard = sanity.LossGuard(factor=3, log_dir=tmp_path)
    history = model.fit(x, y, epochs=3, batch_size=64, callbacks=[guard], verbose=0)
    steps_per_epoch = len(x) // 64
    assert guard.stopped and guard.stopped_step <= steps_per_epoch
    assert len(history.history["loss"]) == 1
    assert not (guard.last_loss <= 3 * guard.initial_loss)  # above 3x or NaN
    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    assert {"loss_guard/reason", "loss_guard/loss"} <= set(acc.Tags()["tensors"])
    text = acc.Tensors("loss_guard/reason")[0].tensor_proto.string_val[0].decode()
    assert "initial" in text or "turned" in text


def test_loss_guard_leaves_healthy_run_alone():
    x, y = small_data()
    model = mlp()
    model.compile(optimizer=adam(), loss="sparse_categorical_crossentropy")
    guard = sanity.LossGuard()
    history = model.fit(x[:1280], y[:1280], epochs=2, batch_size=64, callbacks=[guard], verbose=0)
    assert not guard.stopped and guard.reason is None
    assert len(history.history["loss"]) == 2
    assert guard.last_loss < guard.initial_loss


def test_sanity_check_table_and_short_run_catches_high_lr(capsys):
    x, y = small_data()
    report = sanity.sanity_check(hot_mlp, (x, y), overfit_steps=20, short_run_samples=640)
    out = capsys.readouterr().out
    assert set(report.results) == {"initial_loss", "overfit", "regularization", "short_run"}
    assert not report.passed
    assert report.results["initial_loss"].passed and not report.results["short_run"].passed
    assert report.results["short_run"].stopped
    assert "| short run loss falls" in out and "FAIL" in out


@pytest.mark.parametrize("call, bad", [
    (lambda: sanity.LossGuard(factor=0.5), "0.5"),
    (lambda: sanity.LossGuard(check_every=0), "check_every=0"),
    (lambda: sanity.check_overfit(mlp, *small_data(), n=0), "n=0"),
    (lambda: sanity.check_overfit(mlp, *small_data(), n=10**6), "n=1000000"),
    (lambda: sanity.check_initial_loss(mlp(), *small_data(), tolerance=-1), "-1"),
    (lambda: sanity.check_regularization_raises_loss(mlp, *small_data(), l2=0.0), "l2=0.0"),
])
def test_bad_arguments_raise_naming_the_value(call, bad):
    with pytest.raises(ValueError, match=bad):
        call()
