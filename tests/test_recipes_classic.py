"""Quick-mode smoke tests of the classic-experiment recipes (issue 5, items 1-5; issues 17, 19).

Each runs a recipe's own ``--quick`` mode (the settings a user gets) once, on the embedded
``fashion_mnist_small`` with `tmp_path` as the log folder, and checks the qualitative outcome
that quick mode must still show (named in each test's docstring), the recipe's own verdict on
it ("What this run shows"), the PNG figures, the TensorBoard event files, that the runs log
``update_ratio/*``, and the doctor's findings on the runs the recipe declares healthy or
faulty (`tests._recipe_doctor.check_declared_runs`).

Usage::

    pytest tests/test_recipes_classic.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests._recipe_doctor import check_declared_runs

QUICK = ["--quick", "--dataset", "fashion_mnist_small", "--seed", "0"]


def _args(tmp_path, *extra) -> list[str]:
    return [*QUICK, "--log-dir", str(tmp_path), *map(str, extra)]


def _check_outputs(results: dict, figures: list[str], runs: list[str]) -> None:
    """Every figure is a non-empty PNG and every run folder holds a TensorBoard event file."""
    folder = Path(results["log_dir"])
    for figure in figures:
        path = folder / figure
        if not path.is_file() or path.read_bytes()[:4] != b"\x89PNG":
            pytest.fail(f"missing or invalid figure {path}")
    for run in runs:
        if not list((folder / run).rglob("events.out.tfevents.*")):
            pytest.fail(f"no TensorBoard event file under {folder / run}")


def _held(results: dict) -> dict:
    return {f.claim: f.held for f in results["findings"]}


def _logs_update_ratios(run_folder: Path) -> bool:
    from keras_bn.report import read_run

    return any(tag.startswith("update_ratio/") for tag in read_run(run_folder))


def test_init_study_statistics_and_training(tmp_path):
    """Quick mode still shows: N(0, 0.01^2) tanh collapses, N(0, 0.05^2) saturates, Glorot
    keeps tanh's scale, He keeps ReLU's, Glorot shrinks ReLU's, and He + ReLU trains better
    than the collapsing net; the recipe says so, and the doctor names the collapse and the
    saturation in their one-step runs."""
    from keras_bn.recipes import init_study

    results = init_study.main(_args(tmp_path))
    stats = results["stats"]

    def last_over_first(config):
        return stats[config][-1]["std"] / stats[config][0]["std"]

    assert last_over_first("tanh_normal_0.01") < 0.15
    assert all(layer["saturated"] > 0.30 for layer in stats["tanh_normal_0.05"])
    assert last_over_first("tanh_glorot") > 0.3
    assert 0.7 <= last_over_first("relu_he") <= 1.4
    assert last_over_first("relu_glorot") < 0.3
    assert set(results["training"]) == set(init_study.QUICK_TRAIN_CONFIGS)
    assert all(0.0 <= h["test_accuracy"][-1] <= 1.0 for h in results["training"].values())
    _check_outputs(results, ["init_study_histograms.png", "init_study_training.png"],
                   list(init_study.QUICK_LOGGED) + ["train_tanh_normal_0.01"])
    found = check_declared_runs(init_study, results)
    assert not [f for f in found["tanh_glorot"] if f.severity != "info"]  # Glorot: nothing to warn about
    assert all(f.held for f in results["findings"][:5]), results["findings"]
    assert results["findings"][5].claim.startswith("ReLU + He trains to a higher test accuracy")
    assert _logs_update_ratios(Path(results["log_dir"]) / "train_tanh_normal_0.01")


def test_bn_paper_mnist_input_drift(tmp_path):
    """Quick mode still shows Figure 1 (b, c): the plain net's sigmoid input drifts more."""
    from keras_bn.recipes import bn_paper_mnist

    results = bn_paper_mnist.main(_args(tmp_path))
    runs = results["runs"]

    def median_drift(run):
        percentiles = runs[run]["percentiles"]
        return abs(percentiles[-1][1] - percentiles[0][1])

    # Figure 1 b, c: without BN the sigmoid's input distribution moves much more.
    assert median_drift("no_bn") > 2 * median_drift("with_bn")
    for run in bn_paper_mnist.RUNS:
        assert len(runs[run]["percentiles"]) == len(runs[run]["step"]) + 1
        assert runs[run]["test_accuracy"][-1] > 0.3  # both learn well above chance (0.1)
    assert _held(results)["with BN the sigmoid's median input drifts less"]
    assert _logs_update_ratios(Path(results["log_dir"]) / "with_bn")
    _check_outputs(results, ["bn_paper_mnist.png"], list(bn_paper_mnist.RUNS))
    check_declared_runs(bn_paper_mnist, results)


def test_activation_comparison_gradient_vanishing(tmp_path):
    """Quick mode still shows: a deep sigmoid net's gradient vanishes towards the input
    without BN and not with it; ReLU + BN keeps it; the doctor names the vanishing gradient."""
    from keras_bn.recipes import activation_comparison

    results = activation_comparison.main(_args(tmp_path))
    runs = results["runs"]
    # A deep sigmoid net's gradient vanishes towards the input; ReLU + BN keeps it.
    assert runs["sigmoid_no_bn"]["grad_ratio_start"] < 0.01
    assert runs["sigmoid_no_bn"]["grad_ratio_start"] < runs["relu_bn"]["grad_ratio_start"] / 100
    assert runs["relu_bn"]["grad_ratio_start"] > 0.3
    assert 0.0 <= runs["relu_no_bn"]["dead"] <= 1.0 and 0.0 <= runs["sigmoid_no_bn"]["saturated"] <= 1.0
    assert all(r["seconds_per_epoch"] > 0 for r in runs.values())
    held = _held(results)
    assert held["without BN the deep sigmoid net's gradient vanishes towards the input"] and held["BN keeps it from vanishing"]
    _check_outputs(results, ["activation_comparison.png"], ["sigmoid_no_bn", "relu_no_bn"])
    check_declared_runs(activation_comparison, results)


def test_bn_learning_rate_high_rate(tmp_path):
    """Quick mode still shows: at SGD learning rate 1 the plain MLP diverges (and the doctor says
    so), the BN one trains; each learning rate starts from the same weights."""
    from keras_bn.recipes import bn_learning_rate

    results = bn_learning_rate.main(_args(tmp_path))
    runs = results["runs"]
    # SGD + momentum at learning rate 1: the plain MLP diverges, the BN one trains.
    assert runs["mlp_no_bn_lr1"]["diverged"]
    assert not runs["mlp_bn_lr1"]["diverged"]
    assert runs["mlp_bn_lr1"]["test_accuracy"] > 0.5
    assert _held(results)["mlp: BN trains at a higher learning rate than no BN"]
    assert _logs_update_ratios(Path(results["log_dir"]) / "mlp_bn_lr1")
    _check_outputs(results, ["bn_learning_rate.png"], list(runs))
    check_declared_runs(bn_learning_rate, results)


def test_batch_size_norms_bn_mode_gap(tmp_path):
    """Quick mode still shows: at batch 2, BN's batch statistics and its moving averages give
    different predictions; where batch 32 differs even more, the verdict names the reason,
    its 8 steps against BN's ~100-step memory; the doctor names BN's small batch."""
    from keras_bn.recipes import batch_size_norms

    results = batch_size_norms.main(_args(tmp_path))
    runs = results["runs"]
    assert runs["batch_batch2"]["disagreement"] > 0.05
    assert set(runs) == {"batch_batch2", "batch_batch32", "layer_batch2"}  # what the claims compare
    assert runs["batch_batch2"]["steps"] == 128 and runs["layer_batch2"]["steps"] == 128
    assert "disagreement" not in runs["layer_batch2"]
    differ = results["findings"][0]
    assert differ.claim == "BN's batch-statistics and moving-average predictions differ more at batch 2 than at 32"
    assert differ.held or "at batch 32: BN's moving averages lag its batch statistics" in differ.sentence()
    assert "after 8 steps = 0.08 x BN's ~100-step memory" in differ.sentence() or differ.held
    assert _logs_update_ratios(Path(results["log_dir"]) / "batch_batch2")
    _check_outputs(results, ["batch_size_norms.png"], list(runs))
    check_declared_runs(batch_size_norms, results)


def test_accuracy_axis_shows_point_differences():
    from keras_bn.recipes.activation_comparison import accuracy_axis

    low, high = accuracy_axis([0.81, 0.83, 0.86, float("nan")])
    assert (low, high) == pytest.approx((0.76, 0.91))  # a 1-point difference is 1/15 of the axis, not 1/100
    assert accuracy_axis([0.02, 0.99]) == (0.0, 1.0)
    assert accuracy_axis([float("nan")]) == (0.0, 1.0)


def test_restart_trains_as_a_fresh_model_would():
    """`_common.restart` (how quick modes reuse one traced model): after a fit, restarting from
    the initial state at a new learning rate and fitting again gives the weights a freshly
    built and compiled copy gets at that rate."""
    import keras

    import keras_bn
    from keras_bn.recipes import _common

    x = np.random.default_rng(0).standard_normal((64, 6)).astype("float32")
    y = np.arange(64) % 3

    def build(learning_rate):
        keras.utils.set_random_seed(1)
        model = keras_bn.build_dense((6,), [5], 3, norm="batch")
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9), loss="sparse_categorical_crossentropy")
        return model

    def fit(model):
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return model

    reused = build(0.1)
    start = _common.initial_state(reused)
    fit(reused)
    _common.restart(reused, start, learning_rate=0.5)
    assert int(keras.ops.convert_to_numpy(reused.optimizer.iterations)) == 0
    assert float(keras.ops.convert_to_numpy(reused.optimizer.learning_rate)) == pytest.approx(0.5)
    fresh = fit(build(0.5))
    fit(reused)
    assert len(reused.variables) == len(fresh.variables)
    for got, want in zip(reused.variables, fresh.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want),
                                   rtol=1e-5, atol=1e-6, err_msg=got.path)


def _small_classifier(seed=1):
    import keras

    import keras_bn

    keras.utils.set_random_seed(seed)
    model = keras_bn.build_dense((6,), [5], 3, norm="batch")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_ready_to_fit_traces_the_train_step_once_and_trains_the_same():
    """`_common.ready_to_fit` creates the optimizer's, metrics' and loss trackers' variables
    before ``fit``, so TensorFlow traces the train step once instead of twice; the weights
    after training are those of a fit without it."""
    import keras

    from keras_bn.recipes import _common

    x = np.random.default_rng(0).standard_normal((64, 6)).astype("float32")
    y = (np.arange(64) % 3).astype("int32")
    traces = {}

    def counting(model, key):
        step = model.train_step

        def train_step(*args):  # (data) on TensorFlow, (state, data) on JAX
            traces[key] = traces.get(key, 0) + 1  # Python side effect: runs once per trace
            return step(*args)

        model.train_step = train_step
        return model

    plain = counting(_small_classifier(), "plain")
    ready = counting(_small_classifier(), "ready")
    assert _common.ready_to_fit(ready, x[:16], y[:16]) is ready
    for model in (plain, ready):
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    if keras.backend.backend() == "tensorflow":
        assert traces == {"plain": 2, "ready": 1}
    for got, want in zip(ready.variables, plain.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want),
                                   rtol=1e-6, atol=1e-7, err_msg=got.path)


def test_eager_validation_gives_the_numbers_of_validation_data():
    """`_common.EagerValidation`'s ``val_loss`` / ``val_accuracy`` (direct model calls, in
    chunks) against Keras' own ``validation_data`` evaluation of the same weights."""
    import keras

    from keras_bn.recipes import _common

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 6)).astype("float32"), (np.arange(64) % 3).astype("int32")
    x_val, y_val = rng.standard_normal((45, 6)).astype("float32"), rng.integers(0, 3, 45).astype("int32")
    keras_way, eager_way = _small_classifier(), _small_classifier()
    want = keras_way.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                         validation_data=(x_val, y_val), validation_batch_size=20).history
    got = eager_way.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                        callbacks=[_common.EagerValidation(x_val, y_val, batch_size=20)]).history
    assert _common.EagerValidation.applies_to(eager_way)
    np.testing.assert_allclose(got["val_loss"], want["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(got["val_accuracy"], want["val_accuracy"], rtol=0, atol=1e-7)
    eager_way.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert not _common.EagerValidation.applies_to(eager_way)  # logits: train_for_steps uses validation_data


def test_training_pass_gives_numpy_loss_tape_gradients_and_layer_outputs():
    """`_common.training_pass` (one training-mode pass: norm_free's numbers at init) against
    NumPy's cross-entropy and first-layer output and a separate GradientTape; BN's moving
    statistics are left as they were."""
    import keras
    import tensorflow as tf

    from keras_bn.recipes import _common

    model = _small_classifier()
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((16, 6)).astype("float32"), (np.arange(16) % 3).astype("int32")
    first = next(layer for layer in model.layers if getattr(layer, "kernel", None) is not None)
    moving = [v.numpy().copy() for v in model.non_trainable_variables]
    got = _common.training_pass(model, x, y, [first.name])
    for before, variable in zip(moving, model.non_trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), before)
    kernels = [layer for layer in model.layers if getattr(layer, "kernel", None) is not None]
    with tf.GradientTape() as tape:
        probs = model(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
    grads = tape.gradient(loss, [layer.kernel for layer in kernels])
    want = {layer.name: np.linalg.norm(g.numpy()) for layer, g in zip(kernels, grads)}
    p = probs.numpy().astype("float64")
    assert got["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(16), y])), rel=1e-5)
    assert got["grad_norms"].keys() == want.keys() and all(v > 0 for v in want.values())
    for name, norm in want.items():
        assert got["grad_norms"][name] == pytest.approx(norm, rel=1e-5)
    dense = x @ first.kernel.numpy() + (first.bias.numpy() if first.bias is not None else 0)
    np.testing.assert_allclose(got["outputs"][first.name], dense, rtol=1e-5, atol=1e-6)
    assert _common.kernel_gradient_norms(model, x, y) == pytest.approx(got["grad_norms"], rel=1e-6)
