"""keras_bn.search: equal budgets, log-uniform sampling, refined ranges, HParams dashboard files."""

import math
import warnings

import numpy as np
import pytest
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from keras_bn import search

from tests._events import plugin_content, run_values
from tests._training_tools_data import data_forms, mlp, small_data

SPACE = {"learning_rate": search.Range(1e-5, 1e-1), "dropout": search.Range(0.0, 0.5, log=False)}


def test_grid_and_random_on_one_budget_differ_in_distinct_learning_rates():
    grid = search._grid(SPACE, 9)
    sampled = search._sample(SPACE, 9, np.random.default_rng(0))
    assert len(grid) == len(sampled) == 9
    assert len({c["learning_rate"] for c in grid}) == 3
    assert len({c["learning_rate"] for c in sampled}) == 9
    assert sorted({c["learning_rate"] for c in grid}) == pytest.approx([1e-5, 1e-3, 1e-1])


def test_log_range_samples_log_uniformly():
    values = np.array([search.Range(1e-6, 1.0).sample(np.random.default_rng(i)) for i in range(2000)])
    decades = np.histogram(np.log10(values), bins=6, range=(-6, 0))[0]
    assert values.min() >= 1e-6 and values.max() <= 1.0
    assert decades.min() > 250  # ~333 per decade; uniform sampling would put ~90% in the top one


def fake_result(values_and_scores, stage="coarse"):
    objective = search.Objective("val_accuracy", "max")
    trials = [search.Trial(f"{stage}_{i:02d}", stage, {"learning_rate": lr, "dropout": 0.1},
                           {"loss": 1.0, "val_loss": 1.0, "val_accuracy": acc}, 1, objective)
              for i, (lr, acc) in enumerate(values_and_scores)]
    return search.SearchResult(trials, SPACE)


@pytest.mark.parametrize("scores", [
    [(1e-5, 0.1), (3e-3, 0.80), (1e-2, 0.85), (2e-2, 0.83), (9e-2, 0.2)],
    [(1e-5, 0.1), (1e-4, 0.5), (9.9e-2, 0.9), (5e-2, 0.88), (3e-2, 0.87)],  # best at the edge
    [(2e-3, 0.8), (2e-3, 0.8), (2e-3, 0.8)],  # no spread
])
def test_fine_range_inside_coarse_and_holds_best(scores):
    coarse = fake_result(scores)
    fine = search.refine(coarse, top_k=3)
    lr, coarse_lr = fine["learning_rate"], SPACE["learning_rate"]
    best = coarse.best.hparams["learning_rate"]
    assert coarse_lr.low <= lr.low < lr.high <= coarse_lr.high
    assert lr.low <= best <= lr.high
    assert math.log(lr.high / lr.low) < math.log(coarse_lr.high / coarse_lr.low)
    assert lr.log


def test_edge_warning():
    with pytest.warns(UserWarning, match="learning_rate=0.099 is at the high edge"):
        messages = search.edge_warnings(fake_result([(1e-4, 0.5), (9.9e-2, 0.9)]))
    assert len(messages) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert search.edge_warnings(fake_result([(1e-3, 0.9), (1e-4, 0.5)])) == []


def read_hparams(run_dir):
    """``({tag: [(step, ndarray), ...]}, {tag: HParamsPluginData})`` of one run."""
    content = plugin_content(run_dir, hp_metadata.PLUGIN_NAME)
    plugin = {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}
    return run_values(run_dir)[0], plugin


def test_coarse_to_fine_logs_every_trial_to_hparams_dashboard_and_kills_divergers(tmp_path, capsys):
    x, y = small_data()
    data = (x[:512], y[:512], x[512:768], y[512:768])
    space = {"learning_rate": search.Range(1e-3, 50.0)}
    with warnings.catch_warnings():  # edge warnings may or may not fire here; tested on their own
        warnings.simplefilter("ignore", UserWarning)
        result = search.coarse_to_fine(mlp_fn, space, data, coarse_trials=3, fine_trials=2, top_k=1,
                                       coarse_epochs=1, fine_epochs=1, batch_size=32, log_dir=tmp_path, seed=3)
    assert [t.stage for t in result.trials] == ["coarse"] * 3 + ["fine"] * 2
    fine_lr = result.fine_space["learning_rate"]
    best_coarse = result.stage("coarse").best.hparams["learning_rate"]
    assert 1e-3 <= fine_lr.low <= best_coarse <= fine_lr.high <= 50.0
    assert all(fine_lr.low <= t.hparams["learning_rate"] <= fine_lr.high for t in result.stage("fine").trials)
    killed = [t for t in result.trials if t.diverged]
    assert killed and all(t.hparams["learning_rate"] > 1.0 for t in killed)
    assert result.best not in killed

    _, root = read_hparams(tmp_path)
    experiment = root[hp_metadata.EXPERIMENT_TAG].experiment
    assert [h.name for h in experiment.hparam_infos] == ["learning_rate"]
    # the objective and every key the fit logged (the model's own metrics), plus "diverged"
    assert {m.name.tag for m in experiment.metric_infos} == {"val_accuracy", "val_loss", "loss", "accuracy", "diverged"}
    for trial in result.trials:
        values, plugin = read_hparams(tmp_path / trial.trial_id)
        info = plugin[hp_metadata.SESSION_START_INFO_TAG].session_start_info
        assert info.hparams["learning_rate"].number_value == pytest.approx(trial.hparams["learning_rate"])
        assert [s for s, _ in values["val_accuracy"]] == list(range(1, trial.epochs + 1))
        assert float(values["val_accuracy"][-1][1]) == pytest.approx(trial.val_accuracy, rel=1e-6, nan_ok=True)
        assert float(values["diverged"][-1][1]) == float(trial.diverged)

    table = tmp_path / "trials.csv"
    result.save(table)
    lines = table.read_text().splitlines()
    assert lines[0].startswith("trial,stage,learning_rate") and len(lines) == 6
    assert "| coarse_00 |" in result.table().replace("  ", " ").replace("  ", " ")


def mlp_fn(hp):
    return mlp(norm=None)


@pytest.mark.parametrize("call, bad", [
    (lambda: search.Range(1.0, 0.5), r"`high` must be greater than `low`=1\. Received: high=0.5"),
    (lambda: search.Range(0.0, 1.0), "low=0.0"),
    (lambda: search.Choice(()), r"values=\(\)"),
    (lambda: search.random_search(mlp_fn, {"lr": (1e-3, 1e-1)}, small_data()), "lr"),
    (lambda: search.random_search(mlp_fn, SPACE, small_data(), trials=0), "trials=0"),
    (lambda: search.refine(fake_result([(1e-3, 0.5)]), top_k=0), "top_k=0"),
])
def test_bad_arguments_raise_naming_the_value(call, bad):
    with pytest.raises(ValueError, match=bad):
        call()


def test_edge_warning_skips_a_two_point_grid_axis():
    # a 2-point grid axis holds only the two ends: its best is always "at the edge"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert search.edge_warnings(fake_result([(1e-5, 0.5), (1e-1, 0.9)], stage="grid")) == []
    with pytest.warns(UserWarning, match="high edge"):  # 3 points: the best at an end means something
        search.edge_warnings(fake_result([(1e-5, 0.5), (1e-3, 0.6), (1e-1, 0.9)], stage="grid"))


@pytest.mark.parametrize("name, direction", [
    ("val_loss", "min"), ("loss", "min"), ("val_output_a_loss", "min"), ("val_mean_squared_error", "min"),
    ("val_mae", "min"), ("val_accuracy", "max"), ("val_sparse_categorical_accuracy", "max"), ("acc", "max"),
    ("val_auc", "max"), ("val_auc_3", "max"), ("precision", "max"), ("val_recall", "max"),
    ("val_r2_score", "max"), ("val_false_positives", "min"), ("val_root_mean_squared_error", "min"),
])
def test_objective_direction_is_inferred_as_keras_tuner_does(name, direction):
    assert search.Objective.of(name) == search.Objective(name, direction)


def test_objective_refusals_name_what_to_do():
    with pytest.raises(ValueError, match=r"Objective\('my_score', 'min' or 'max'\)"):
        search.Objective.of("my_score")
    with pytest.raises(ValueError, match="direction=.up"):
        search.Objective("my_score", "up")


def regression_data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0]) + 5.0).astype("float32")[:, None]
    return x, y


def regression_fn(hp):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(0.1))])
    model.compile(keras.optimizers.SGD(hp["learning_rate"]), loss="mse", metrics=["mae"])
    return model


def test_regression_model_keeps_its_loss_and_metrics_and_the_lower_val_loss_wins():
    x, y = regression_data()
    space = {"learning_rate": search.Choice((1e-5, 3e-2))}
    result = search.grid_search(regression_fn, space, (x[:300], y[:300], x[300:], y[300:]), trials=2, epochs=2,
                                batch_size=32, verbose=False)
    assert len(result.trials) == 2
    for trial in result.trials:  # the model's own compile: mse loss and mae metric, no accuracy added
        assert set(trial.metrics) == {"loss", "mae", "val_loss", "val_mae"}
    slow, fast = sorted(result.trials, key=lambda t: t.hparams["learning_rate"])
    assert fast.val_loss < slow.val_loss
    assert result.best is fast and result.objective == search.Objective("val_loss", "min")
    assert result.best.val_loss == min(t.val_loss for t in result.trials)
    # maximizing an error metric picks the other trial: the direction is honoured
    worst = search.grid_search(regression_fn, space, (x[:300], y[:300], x[300:], y[300:]), trials=2, epochs=2,
                               batch_size=32, objective=search.Objective("val_mae", "max"), verbose=False)
    assert worst.best.hparams["learning_rate"] == 1e-5


def test_objective_missing_from_the_fit_logs_is_refused_naming_the_logged_keys():
    x, y = regression_data(100)
    with pytest.raises(ValueError, match=r"loss, mae, val_loss, val_mae.*objective='val_accuracy'"):
        search.random_search(regression_fn, {"learning_rate": search.Choice((1e-3,))}, (x, y), trials=1, epochs=1,
                             objective="val_accuracy", verbose=False)


def mse_at(x, y):
    """The loss of regression_fn's initial model (kernel 0.1, bias 0) on (x, y), in NumPy."""
    return float(np.mean((x.astype(np.float64) @ np.full((4, 1), 0.1) - y) ** 2))



@pytest.mark.parametrize("kind", ["tf_dataset", "py_dataset", "generator"])
def test_search_takes_the_data_forms_fit_takes(kind):
    # learning rate 0: the trial's losses are the initial model's, known exactly in NumPy
    x, y = regression_data(200)
    x_val, y_val = regression_data(50, seed=1)
    data = data_forms(x, y, 25)[kind]()
    validation = None if kind == "generator" else (x_val, y_val)
    result = search.random_search(regression_fn, {"learning_rate": search.Choice((0.0,))}, data, trials=1, epochs=1,
                                  validation_data=validation, verbose=False)
    trial = result.trials[0]
    if kind == "generator":  # read once; its last 20% serve for validation, as for (x, y)
        assert trial.loss == pytest.approx(mse_at(x[:160], y[:160]), rel=1e-5)
        assert trial.val_loss == pytest.approx(mse_at(x[160:], y[160:]), rel=1e-5)
    else:
        assert trial.loss == pytest.approx(mse_at(x, y), rel=1e-5)
        assert trial.val_loss == pytest.approx(mse_at(x_val, y_val), rel=1e-5)


def test_a_dataset_without_validation_data_is_refused_for_a_val_objective():
    tf = pytest.importorskip("tensorflow", reason="the tf.data form needs TensorFlow installed")

    x, y = regression_data(100)
    with pytest.raises(ValueError, match="`validation_data` is needed for objective='val_loss'"):
        search.random_search(regression_fn, {"learning_rate": search.Choice((0.0,))},
                             tf.data.Dataset.from_tensor_slices((x, y)).batch(25), trials=1, verbose=False)


def test_edge_warning_of_a_search_points_at_the_callers_line():
    x, y = regression_data(200)
    with pytest.warns(UserWarning, match="learning_rate=0.03 is at the high edge") as record:
        search.grid_search(regression_fn, {"learning_rate": search.Range(1e-5, 3e-2)}, (x, y), trials=3, epochs=1,
                           batch_size=32, verbose=False)
    assert [w.filename for w in record if "edge" in str(w.message)] == [__file__]
