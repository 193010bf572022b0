"""keras_bn.sanity: each check passes a healthy model and catches the broken one it is for."""

import math

import keras
import numpy as np
import pytest

from keras_bn import sanity
from keras_bn.optimizers import adam

from tests._events import run_values
from tests._training_tools_data import data_forms, mlp, small_data


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
    values, plugins = run_values(tmp_path)
    assert plugins == {"loss_guard/reason": "text", "loss_guard/loss": "scalars"}
    ((step, text),) = values["loss_guard/reason"]
    assert step == guard.stopped_step and text.item().decode() == guard.reason
    ((step, loss),) = values["loss_guard/loss"]
    assert step == guard.stopped_step and (float(loss) == pytest.approx(guard.last_loss, rel=1e-6)
                                           or math.isnan(guard.last_loss) and math.isnan(loss))


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


def log_softmax_ce(logits, y):
    """Mean sparse cross-entropy of `logits`, in NumPy (float64)."""
    logits = np.asarray(keras.ops.convert_to_numpy(logits), np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(y)), y]))


def logits_mlp(from_logits=True):
    model = mlp(norm=None, output_activation=None)
    model.compile(adam(), keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    return model


def test_initial_loss_measures_the_compiled_logits_loss():
    x, y = small_data()
    model = logits_mlp()
    result = sanity.check_initial_loss(model, x[:500], y[:500])
    assert result.passed, result.row()
    assert result.loss == pytest.approx(log_softmax_ce(model(x[:500]), y[:500]), rel=1e-5)
    assert result.loss_name == "SparseCategoricalCrossentropy" and result.formula == "ln(C)"


def test_initial_loss_fails_outputs_that_contradict_from_logits():
    x, y = small_data()
    wrong = sanity.check_initial_loss(logits_mlp(from_logits=False), x[:500], y[:500])
    assert wrong.passed is False and "from_logits=True" in wrong.note
    twice = mlp(norm=None)  # softmax output
    head = twice.get_layer("logits")
    for weight in (head.kernel, head.bias):  # uniform probabilities: the loss is ln(10) whatever the seed
        weight.assign(np.zeros(weight.shape, "float32"))
    twice.compile(adam(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    double = sanity.check_initial_loss(twice, x[:500], y[:500])
    assert double.loss == pytest.approx(math.log(10), rel=1e-5)  # on target, yet refused:
    assert double.passed is False and "second softmax" in double.note
    # a loss passed in wins over the compile; from_logits contradicting it is refused
    given = sanity.check_initial_loss(twice, x[:500], y[:500], loss="sparse_categorical_crossentropy")
    assert given.passed and given.note == "" and given.loss == pytest.approx(math.log(10), rel=1e-5)
    with pytest.raises(ValueError, match="from_logits.=False contradicts"):
        sanity.check_initial_loss(twice, x[:500], y[:500], from_logits=False)


def regression_fn():
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(adam(learning_rate=1e-2), "mse")
    return model


def test_regression_initial_loss_is_not_applicable_and_the_report_says_so(capsys):
    x, labels = small_data()
    y = labels.astype("float32")[:, None]
    model = regression_fn()
    result = sanity.check_initial_loss(model, x[:300], y[:300])
    assert result.passed is None and result.expected is None and "mean_squared_error" in result.note
    pred = keras.ops.convert_to_numpy(model(x[:300]))
    assert result.loss == pytest.approx(float(np.mean((pred - y[:300]) ** 2)), rel=1e-5)
    report = sanity.sanity_check(regression_fn, (x, y), overfit_steps=5, short_run_samples=256)
    assert report.results["initial_loss"].passed is None
    assert report.results["overfit"].accuracy is None  # mse: the loss target only
    assert "| initial loss" in capsys.readouterr().out and "| n/a " in report.table()
    assert report.passed == all(r.passed is not False for r in report.results.values())


def test_expected_initial_loss():
    assert sanity.expected_initial_loss("sparse_categorical_crossentropy", 10) == (pytest.approx(math.log(10)), "ln(C)")
    assert sanity.expected_initial_loss(keras.losses.CategoricalCrossentropy(from_logits=True), 4)[0] == pytest.approx(math.log(4))
    assert sanity.expected_initial_loss(keras.losses.BinaryCrossentropy(), None) == (pytest.approx(math.log(2)), "ln(2)")
    assert sanity.expected_initial_loss("mse", 10) is None
    assert sanity.expected_initial_loss(keras.losses.Huber(), 10) is None


def seeded_logits_mlp():
    keras.utils.set_random_seed(7)
    return logits_mlp()



@pytest.mark.parametrize("kind", ["tf_dataset", "py_dataset", "generator"])
def test_sanity_check_takes_the_data_forms_fit_takes(kind):
    x, y = small_data()
    x, y = x[:1200], y[:1200]
    report = sanity.sanity_check(seeded_logits_mlp, data_forms(x, y, 50)[kind](), overfit_steps=3,
                                 short_run_samples=128, verbose=False)
    initial = report.results["initial_loss"]
    assert initial.passed
    assert initial.loss == pytest.approx(log_softmax_ce(seeded_logits_mlp()(x[:1000]), y[:1000]), rel=1e-5)
    assert report.results["short_run"].steps == 2  # 128 samples read, batches of 64


def test_multi_output_model_is_refused_naming_what_to_do():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(2)(inputs)])
    with pytest.raises(ValueError, match=r"single-output model; this one has 2 outputs.*model.outputs\[i\]"):
        sanity.check_initial_loss(model, np.ones((4, 4), "float32"), np.zeros(4, "int32"))


def test_loss_guard_survives_an_unwritable_log_dir(tmp_path):
    x, y = small_data()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    guard = sanity.LossGuard(factor=3, log_dir=blocker / "run")
    with pytest.warns(RuntimeWarning, match="could not write"):
        hot_mlp().fit(x[:640], y[:640], epochs=1, batch_size=64, callbacks=[guard], verbose=0)
    assert guard.stopped


def test_overfit_and_short_run_trace_their_train_step_once():
    """The checks build the optimizer's and metrics' variables from one batch before training
    (`_keras_internals.build_for_fit`), so TensorFlow traces each check's train step once, not twice."""
    x, y = small_data()
    traces = []

    def counted():
        model = mlp()
        step = model.train_step

        def train_step(*args):  # a Python side effect: runs once per trace
            traces.append(id(model))
            return step(*args)

        model.train_step = train_step
        return model

    assert sanity.check_overfit(counted, x, y, n=20, max_steps=3).steps is None  # 3 steps: too few to fit
    assert sanity.check_short_run(counted, x[:256], y[:256], batch_size=64).initial_loss > 0
    if keras.backend.backend() == "tensorflow":
        assert len(traces) == 2 and len(set(traces)) == 2, traces
