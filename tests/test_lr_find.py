"""keras_bn.lr_find: the range test leaves the model alone and suggests a sane learning rate."""

import keras
import numpy as np
import pytest

from keras_bn import lr_find as lrf
from keras_bn.optimizers import adam

from tests._events import run_values
from tests._training_tools_data import data_forms, mlp, small_data


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

    values, plugins = run_values(tmp_path / "tb")
    assert plugins == {"lr_find/loss": "scalars", "lr_find/smoothed_loss": "scalars",
                       "lr_find/learning_rate": "scalars", "lr_find/suggestion": "text"}
    assert [s for s, _ in values["lr_find/smoothed_loss"]] == list(range(n))
    np.testing.assert_allclose([float(v) for _, v in values["lr_find/smoothed_loss"]], result.smoothed, rtol=1e-6)
    np.testing.assert_allclose([float(v) for _, v in values["lr_find/learning_rate"]], result.lrs, rtol=1e-6)
    (suggestion,) = values["lr_find/suggestion"]
    assert suggestion[1].item().decode().startswith(f"{result.suggestion:.3g} (rule minimum_div_10)")


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


def test_range_errors_name_the_bound_they_break():
    x, y = small_data()
    with pytest.raises(ValueError, match=r"`max_lr` must be greater than `min_lr`=1\. Received: max_lr=0\.001"):
        lrf.lr_find(mlp, (x, y), min_lr=1, max_lr=1e-3)
    with pytest.raises(ValueError, match=r"`min_lr` must be in \(0, inf\)\. Received: min_lr=0"):
        lrf.lr_find(mlp, (x, y), min_lr=0)


def fake(lrs, smoothed, suggestion):
    lrs, smoothed = np.asarray(lrs, float), np.asarray(smoothed, float)
    return lrf.LRFindResult(lrs, smoothed + 0.1, smoothed, suggestion, "minimum_div_10", {}, None)


def test_plot_takes_a_list_of_results(tmp_path):
    import matplotlib.pyplot as plt

    r1 = fake(np.logspace(-5, 0, 20), np.linspace(2.3, 1.0, 20), 1e-3)
    r2 = fake(np.logspace(-5, 0, 20), np.linspace(2.3, 0.5, 20), 1e-2)
    shown = {}
    original = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        shown["labels"] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        lrf.plot([r1, r2], tmp_path / "two.png")
    finally:
        plt.Figure.savefig = original
    assert (tmp_path / "two.png").stat().st_size > 1000
    assert shown["labels"] == ["run 1 (suggests 0.001)", "run 2 (suggests 0.01)"]
    with pytest.raises(TypeError, match="LRFindResult"):
        lrf.plot([r1, "r2"], tmp_path / "bad.png")


def sparse_ce(probabilities, y):
    p = np.asarray(keras.ops.convert_to_numpy(probabilities), np.float64)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))



@pytest.mark.parametrize("kind", ["tf_dataset", "py_dataset", "generator"])
def test_lr_find_takes_the_data_forms_fit_takes(kind):
    x, y = small_data()
    x, y = x[:128], y[:128]  # 4 batches of 32
    model = mlp(norm=None)
    steps = 4 if kind == "generator" else 10  # a dataset is passed over again
    result = lrf.lr_find(model, data_forms(x, y, 32)[kind](), steps=steps, min_lr=1e-6, max_lr=1e-5)
    assert len(result.lrs) == steps
    # the first batch, in order: the untouched model's loss on x[:32] (the copy starts from its weights)
    assert result.losses[0] == pytest.approx(sparse_ce(model(x[:32]), y[:32]), rel=1e-5)
    if kind == "generator":
        with pytest.raises(ValueError, match="ended after 4 batches; 5 steps.*steps=5"):
            lrf.lr_find(model, data_forms(x, y, 32)[kind](), steps=5)


def test_an_unwritable_log_dir_warns_and_the_curve_is_returned(tmp_path):
    x, y = small_data()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="could not write"):
        result = lrf.lr_find(mlp, (x[:640], y[:640]), steps=5, log_dir=blocker / "tb")
    assert len(result.lrs) == 5
