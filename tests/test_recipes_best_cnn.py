import math
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_bn.recipes import best_cnn
from tests._recipe_doctor import check_declared_runs


def test_quick_run_reports_its_measurements(tmp_path):
    result = best_cnn.main(["--quick", "--dataset", "fashion_mnist_small", "--log-dir", str(tmp_path)])
    check_declared_runs(best_cnn, result)  # logged with the diagnostics: the doctor finds no error
    assert result["epochs"] == 2 and not result["stopped_by_budget"]
    assert len(result["history"]["val_accuracy"]) == 2  # the plot draws a curve, not a single dot
    assert result["test_accuracy"] > 0.3  # chance is 0.1
    assert result["parameters"] == best_cnn.build_model((28, 28, 1), 10, quick=True).count_params()
    assert (Path(result["log_dir"]) / "best_cnn.png").is_file()


def test_time_budget_stops_before_the_next_epoch_would_overrun():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    budget = best_cnn.TimeBudget(seconds=0.0)
    history = model.fit(keras.ops.ones((8, 2)), keras.ops.ones((8, 1)), epochs=5, verbose=0, callbacks=[budget])
    assert len(history.history["loss"]) == 1 and budget.stopped_early


def test_time_budget_decays_the_learning_rate_over_the_epochs_that_fit():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(float(model.optimizer.learning_rate.numpy())))
    budget = best_cnn.TimeBudget(seconds=3600, peak_lr=0.1)
    model.fit(keras.ops.ones((8, 2)), keras.ops.ones((8, 1)), epochs=4, verbose=0, callbacks=[budget, record])
    assert budget.planned_epochs == 4 and not budget.stopped_early
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert seen == pytest.approx(expected, rel=1e-5)


def test_best_cnn_builds_the_residual_family_behind_augmentation():
    model = best_cnn.build_model((28, 28, 1), 10, quick=True, family="resnet", augment=True)
    net = model.layers[-1]
    assert [layer.name for layer in model.layers[:2]] == ["augment_shift", "augment_flip"]
    assert net.name == "best_cnn" and "stage1_block1_add" in [layer.name for layer in net.layers]
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    # Augmentation acts in training only: inference is the bare net's output.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, training=False)),
                                  keras.ops.convert_to_numpy(net(x, training=False)))
    assert not np.allclose(keras.ops.convert_to_numpy(model.layers[0](x, training=True)), x)
