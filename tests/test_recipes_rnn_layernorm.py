from pathlib import Path

import numpy as np

from keras_bn.recipes import rnn_layernorm
from tests._recipe_doctor import check_declared_runs


def test_lstms_start_from_the_same_weights():
    models = rnn_layernorm.build_lstms(8, 10)
    plain = models["lstm"].get_layer("block1_lstm").cell
    normed = models["ln_lstm"].get_layer("block1_lstm").cell
    for name in ("kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(getattr(plain, name).numpy(), getattr(normed, name).numpy())
    assert type(normed).__name__ == "LayerNormLSTMCell"
    assert type(models["ln_lstm"].get_layer("block1_lstm")).__name__ == "LayerNormLSTM"


def test_steps_to_reach():
    history = {"step": [10, 20, 30], "loss": [2.0, 1.0, 0.5]}
    assert rnn_layernorm.steps_to_reach(history, 1.0) == 20
    assert np.isnan(rnn_layernorm.steps_to_reach(history, 0.1))


def test_quick_run_all_models_learn_and_bn_at_batch_4_is_flagged(tmp_path, capsys):
    results = rnn_layernorm.main(["--quick", "--dataset", "fashion_mnist_small", "--log-dir", str(tmp_path)])
    found = check_declared_runs(rnn_layernorm, results)
    assert "bn_small_batch" in {f.rule for f in found["mlp_bn"]}
    history = results["history"]
    assert set(history) == {"lstm", "ln_lstm", "mlp_none", "mlp_bn", "mlp_ln"}
    for run, curves in history.items():
        assert len(curves["loss"]) == 2
        assert curves["loss"][-1] < min(curves["loss"][0], np.log(10))  # it learns
        assert curves["test_accuracy"][-1] > 0.15  # chance is 0.1
        assert list((Path(results["log_dir"]) / run / "train").glob("events.out.tfevents.*"))
    assert results["speed"]["lstm_steps"] == history["lstm"]["step"][-1]
    assert (Path(results["log_dir"]) / "rnn_layernorm.png").stat().st_size > 10_000
    assert "LN-LSTM reached the LSTM's final training loss" in capsys.readouterr().out
