"""The recipes' "what this run shows" paragraphs follow the numbers they are given (issue 17.1).

Each test varies the measured quantity a verdict rests on and checks that the verdict and the
reason change with it; `bn_lag` is checked against a NumPy forward pass.
"""

import keras
import numpy as np
import pytest

from keras_bn.recipes import _findings


def _lag(gap=0.0, steps=10_000, memory=100.0, train_mode_loss=0.5):
    return {"train_mode_loss": train_mode_loss, "inference_mode_loss": train_mode_loss + gap, "gap": gap,
            "steps": steps, "memory": memory}


def test_bn_lag_matches_a_numpy_forward_pass_and_leaves_the_moving_statistics():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4)).astype("float32")
    y = rng.integers(0, 3, 16)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(momentum=0.9),
                              keras.layers.Softmax()])
    bn = model.layers[1]
    bn.moving_mean.assign([0.3, -0.2, 0.1])
    bn.moving_variance.assign([2.0, 0.5, 1.5])
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    lag = _findings.bn_lag(model, x, y, steps=25)

    kernel, bias = (w.numpy() for w in model.layers[0].weights)
    z = x.astype(np.float64) @ kernel + bias

    def cross_entropy(mean, var):
        logits = (z - mean) / np.sqrt(var + bn.epsilon) * bn.gamma.numpy() + bn.beta.numpy()
        logits -= logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(y)), y].mean())

    assert lag["train_mode_loss"] == pytest.approx(cross_entropy(z.mean(0), z.var(0)), rel=1e-4)
    assert lag["inference_mode_loss"] == pytest.approx(cross_entropy(bn.moving_mean.numpy(), bn.moving_variance.numpy()),
                                                       rel=1e-4)
    assert lag["gap"] == pytest.approx(lag["inference_mode_loss"] - lag["train_mode_loss"])
    assert lag["memory"] == pytest.approx(10.0) and lag["steps"] == 25
    for variable, value in zip(model.non_trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.parametrize("gap, steps, lags", [
    (0.30, 10_000, True),   # a large inference-mode loss gap: the averages lag
    (0.001, 120, True),     # a small gap, but only 1.2 memories of steps
    (0.001, 10_000, False), # settled: the loss is not BN's inference mode
])
def test_lag_reason_names_the_measured_cause(gap, steps, lags):
    reason = _findings.lag_reason(_lag(gap=gap, steps=steps))
    assert reason.startswith("BN's moving averages lag") == lags
    assert reason.startswith("not BN's moving averages") == (not lags)
    assert f"after {steps} steps = {steps / 100:.2g} x BN's ~100-step memory" in reason
    assert f"inference-mode loss {0.5 + gap:.3f} vs training-mode 0.500" in reason


def test_compare_margin_and_reason_only_where_it_failed():
    won = _findings.compare("BN wins", 0.85, 0.80, scale=100, unit=" points", reason="why")
    lost = _findings.compare("BN wins", 0.61, 0.75, scale=100, unit=" points", reason="why")
    assert won.held and won.by == "5 points better: 0.85 vs 0.8" and "why" not in won.sentence()
    assert not lost.held and lost.by == "14 points worse: 0.61 vs 0.75" and lost.sentence().endswith("; why.")
    assert not _findings.compare("lower", 0.5, 0.4, higher_is_better=False).held
    assert _findings.compare("tie", 0.5, 0.5, ties_hold=True).held and not _findings.compare("tie", 0.5, 0.5).held
    assert not _findings.compare("nan", float("nan"), 0.5).held


def test_report_counts_the_claims_that_held(capsys):
    text = _findings.report([_findings.Finding("a", True, "by 1"), _findings.Finding("b", False, "by 2", "r")])
    assert text.startswith("What this run shows (1 of 2 claims held): a: held (by 1). b: did not hold (by 2); r.")
    assert capsys.readouterr().out.strip() == text


@pytest.mark.parametrize("bn_acc, gap, steps, held, cause", [
    (0.61, 0.40, 62, False, "BN's moving averages lag"),
    (0.61, 0.001, 5000, False, "not BN's moving averages"),
    (0.90, 0.40, 62, True, None),
])
def test_bn_vs_no_bn_verdict_follows_accuracy_and_lag(bn_acc, gap, steps, held, cause):
    from keras_bn.recipes import bn_vs_no_bn

    history = {"no_bn": {"loss": [0.6], "test_accuracy": [0.75]}, "with_bn": {"loss": [0.7], "test_accuracy": [bn_acc]}}
    loss, accuracy = bn_vs_no_bn.explain(history, _lag(gap=gap, steps=steps))
    assert not loss.held and "0.1 worse" in loss.by
    assert accuracy.held == held
    sentence = accuracy.sentence()
    assert (cause in sentence) if cause else ("lag" not in sentence and "did not hold" not in sentence)


def test_batch_size_norms_verdict_follows_the_disagreement():
    from keras_bn.recipes import batch_size_norms

    def runs(small_disagreement):
        return {"batch_batch2": {"test_accuracy": 0.5, "disagreement": small_disagreement, "lag": _lag(gap=0.3, steps=200)},
                "batch_batch32": {"test_accuracy": 0.7, "disagreement": 0.05, "lag": _lag(gap=0.2, steps=12)},
                "layer_batch2": {"test_accuracy": 0.6}, "layer_batch32": {"test_accuracy": 0.65},
                "none_batch2": {"test_accuracy": 0.4}, "none_batch32": {"test_accuracy": 0.75}}

    differ, layer, none = batch_size_norms.explain(runs(0.30), ["batch", "layer", "none"], [2, 32])
    assert differ.held and "25 points more" in differ.by and layer.held
    assert not none.held and "after 12 steps = 0.12 x BN's ~100-step memory" in none.sentence()
    differ, _, _ = batch_size_norms.explain(runs(0.01), ["batch", "layer", "none"], [2, 32])
    assert not differ.held and "at batch 32: BN's moving averages lag" in differ.sentence()


def test_init_study_verdict_follows_the_measured_std_ratio():
    from keras_bn.recipes import init_study

    def layers(first, last, saturated=0.0):
        return [{"std": first, "saturated": saturated}, {"std": (first * last) ** 0.5, "saturated": saturated},
                {"std": last, "saturated": saturated}]

    stats = {"tanh_normal_0.01": layers(0.5, 0.01), "tanh_normal_0.05": layers(0.9, 0.9, saturated=0.8),
             "tanh_glorot": layers(0.6, 0.4), "relu_glorot": layers(1.0, 0.2), "relu_he": layers(1.0, 1.1)}
    assert all(f.held for f in init_study.explain(stats))
    stats["tanh_normal_0.01"] = layers(0.5, 0.4)  # no collapse: the verdict flips, the factor is named
    collapse = init_study.explain(stats)[0]
    assert not collapse.held and "last/first layer std 0.8" in collapse.by
    assert f"per-layer std factor is {0.8 ** 0.5:.3g}" in collapse.sentence()
