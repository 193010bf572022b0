"""keras_bn.search: equal budgets, log-uniform sampling, refined ranges, HParams dashboard files."""

import math
import warnings

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from keras_bn import search

from tests._training_tools_data import mlp, small_data

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


def fake_result(values_and_scores):
    trials = [search.Trial(f"coarse_{i:02d}", "coarse", {"learning_rate": lr, "dropout": 0.1}, 1.0, 1.0, acc, 1)
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
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    return acc, {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}


def test_coarse_to_fine_logs_every_trial_to_hparams_dashboard_and_kills_divergers(tmp_path, capsys):
    x, y = small_data()
    data = (x[:512], y[:512], x[512:768], y[512:768])
    space = {"learning_rate": search.Range(1e-3, 50.0)}
    with pytest.warns(UserWarning):
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
    assert {m.name.tag for m in experiment.metric_infos} == {"val_accuracy", "val_loss", "loss", "diverged"}
    for trial in result.trials:
        acc, plugin = read_hparams(tmp_path / trial.trial_id)
        info = plugin[hp_metadata.SESSION_START_INFO_TAG].session_start_info
        assert info.hparams["learning_rate"].number_value == pytest.approx(trial.hparams["learning_rate"])
        val = acc.Tensors("val_accuracy")
        assert len(val) == trial.epochs
        diverged = float(tensor_util.make_ndarray(acc.Tensors("diverged")[-1].tensor_proto))
        assert diverged == float(trial.diverged)

    table = tmp_path / "trials.csv"
    result.save(table)
    lines = table.read_text().splitlines()
    assert lines[0].startswith("trial,stage,learning_rate") and len(lines) == 6
    assert "| coarse_00 |" in result.table().replace("  ", " ").replace("  ", " ")


def mlp_fn(hp):
    return mlp(norm=None)


@pytest.mark.parametrize("call, bad", [
    (lambda: search.Range(1.0, 0.5), "high=0.5"),
    (lambda: search.Range(0.0, 1.0), "low=0.0"),
    (lambda: search.Choice(()), r"values=\(\)"),
    (lambda: search.random_search(mlp_fn, {"lr": (1e-3, 1e-1)}, small_data()), "lr"),
    (lambda: search.random_search(mlp_fn, SPACE, small_data(), trials=0), "trials=0"),
    (lambda: search.refine(fake_result([(1e-3, 0.5)]), top_k=0), "top_k=0"),
])
def test_bad_arguments_raise_naming_the_value(call, bad):
    with pytest.raises(ValueError, match=bad):
        call()
