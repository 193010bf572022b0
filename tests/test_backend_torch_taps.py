"""The training-step taps on PyTorch (keras_bn.callbacks._tap_state): numbers against torch.autograd.

Run with ``KERAS_BACKEND=torch`` (docs/BACKENDS.md has the command); under any other backend the
whole file skips. Keras' torch trainer calls ``optimizer.apply(grads)`` eagerly at every step, so
the tap measures every step. Every number a callback writes is compared with an independent
computation: the MLP's forward pass written in plain torch (float64) and ``torch.autograd.grad``,
and a hand-written SGD for several steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

import keras

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="PyTorch taps: run with KERAS_BACKEND=torch (this run is "
                                       f"KERAS_BACKEND={keras.backend.backend()})")

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402
from tests._events import scalar_series, tag_step_counts  # noqa: E402
from tests._tap_mlp import LAYERS, LOSS, assert_batch_logs_are_those_fit_passes, users_train_function, data as _data, fit_observed_and_plain_on_a_schedule, layer_norms, mlp, weights_of  # noqa: E402


def data(n=16, seed=0):
    return _data(n, seed, label_dtype="int64")  # torch's cross-entropy takes int64 labels


def torch_grads(weights, x, y):
    """Per-variable gradients of the mean cross-entropy of the MLP at `weights` (kernel, bias per
    layer, in model order), by torch.autograd on a forward pass written in plain torch (float64)."""
    import torch

    params = [torch.tensor(np.asarray(w, np.float64), requires_grad=True) for w in weights]
    h = torch.as_tensor(np.asarray(x, np.float64))
    for i in range(0, len(params) - 2, 2):
        h = torch.relu(h @ params[i] + params[i + 1])
    logits = h @ params[-2] + params[-1]
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y))
    return [g.numpy() for g in torch.autograd.grad(loss, params)]


def clipped(grads, setting, c):
    """The gradients after Keras' clipping rule `setting` with limit `c`, in NumPy."""
    if setting == "global_clipnorm":
        norm = np.sqrt(sum(np.sum(g ** 2) for g in grads))
        return [g * min(1.0, c / norm) for g in grads]
    if setting == "clipnorm":
        return [g * min(1.0, c / np.sqrt(np.sum(g ** 2))) for g in grads]
    return [np.clip(g, -c, c) for g in grads]


@pytest.mark.parametrize("setting, limit", [("global_clipnorm", 0.05), ("clipnorm", 0.05), ("clipvalue", 0.01)])
def test_gradient_norms_equal_torch_autograd_before_and_after_clipping(tmp_path, setting, limit):
    x, y = data()
    model = mlp(keras.optimizers.SGD(0.1, **{setting: limit}))
    expected = torch_grads(weights_of(model), x, y)
    applied = clipped(expected, setting, limit)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    run = str(tmp_path / "train")
    preclip, after = layer_norms(model, expected), layer_norms(model, applied)
    for layer in LAYERS:
        assert after[layer] < preclip[layer] * (1 - 1e-3)  # the clip engaged in every layer
        assert scalar_series(run, f"grad_norm_preclip/{layer}")[1] == pytest.approx(preclip[layer], rel=1e-5)
        assert scalar_series(run, f"grad_norm/{layer}")[1] == pytest.approx(after[layer], rel=1e-5)
    applied_global = float(np.sqrt(sum(np.sum(g ** 2) for g in applied)))
    assert scalar_series(run, "grad_global/norm_preclip")[1] == pytest.approx(
        float(np.sqrt(sum(np.sum(g ** 2) for g in expected))), rel=1e-5)
    assert scalar_series(run, "grad_global/norm")[1] == pytest.approx(applied_global, rel=1e-5)
    assert scalar_series(run, "grad_global/norm_max")[1] == pytest.approx(applied_global, rel=1e-5)
    assert scalar_series(run, "grad_global/clip_fraction")[1] == 1.0
    assert scalar_series(run, "nonfinite/grad_steps")[1] == 0
    for got, want, grad in zip(weights_of(model), weights_of(mlp(keras.optimizers.SGD(0.1))), applied):
        np.testing.assert_allclose(got, want - 0.1 * grad, rtol=1e-5, atol=1e-7)  # what SGD applied
    assert "apply" not in vars(model.optimizer)  # the patch lives only while a step runs


def test_a_train_function_of_the_users_own_is_kept_and_its_norms_equal_torch_autograd(tmp_path):
    """keras-bn calls the function the user assigned to model.train_function at every step
    (before, it put Keras' own in its place for the fit) and measures the steps it runs."""
    x, y = data(32)
    model = mlp(keras.optimizers.SGD(0.1))
    expected = torch_grads(weights_of(model), x[:16], y[:16])
    train_function, calls = users_train_function(model)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    assert len(calls) == 2 and model.train_function is train_function
    logged = scalar_series(str(tmp_path / "train"), "grad_global/norm")
    assert sorted(logged) == [1, 2]
    assert logged[1] == pytest.approx(float(np.sqrt(sum(np.sum(g ** 2) for g in expected))), rel=1e-5)


def sgd_steps(weights, x, y, batch, lr, clip):
    """A hand-written SGD with global-norm clipping: each step's pre-clip global norm, the
    weights after each step."""
    norms, history = [], [weights]
    for start in range(0, len(x), batch):
        grads = torch_grads(weights, x[start:start + batch], y[start:start + batch])
        norm = float(np.sqrt(sum(np.sum(g ** 2) for g in grads)))
        norms.append(norm)
        weights = [w - lr * min(1.0, clip / norm) * g for w, g in zip(weights, grads)]
        history.append(weights)
    return norms, history


def test_a_read_every_4_steps_summarizes_every_step_since_the_previous_read(tmp_path):
    x, y = data(16)
    unclipped, _ = sgd_steps(weights_of(mlp(keras.optimizers.SGD(0.5))), x, y, 4, 0.5, np.inf)
    clip = float(np.median(unclipped))  # some steps clip, some do not
    model = mlp(keras.optimizers.SGD(0.5, global_clipnorm=clip))
    norms, history = sgd_steps(weights_of(model), x, y, 4, 0.5, clip)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=4, figures=False)])
    run = str(tmp_path / "train")
    assert [s for t, s in tag_step_counts(run) if t == "grad_global/norm"] == [4]  # one read, after 4 steps
    clipped_steps = sum(n > clip for n in norms)
    assert 0 < clipped_steps < 4
    assert scalar_series(run, "grad_global/clip_fraction")[4] == clipped_steps / 4
    assert scalar_series(run, "grad_global/norm_max")[4] == pytest.approx(max(min(n, clip) for n in norms), rel=1e-5)
    assert scalar_series(run, "grad_global/norm_preclip")[4] == pytest.approx(norms[-1], rel=1e-5)  # the last step's
    for got, want in zip(weights_of(model), history[-1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_torch_compiled_step_is_tapped_with_the_same_numbers(tmp_path):
    """``jit_compile=True``: Keras' torch trainer runs the step through ``torch.compile``."""
    x, y = data(16)
    model = mlp(keras.optimizers.SGD(0.5, global_clipnorm=0.5), jit_compile=True)
    norms, history = sgd_steps(weights_of(model), x, y, 8, 0.5, 0.5)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    preclip = scalar_series(str(tmp_path / "train"), "grad_global/norm_preclip")
    assert preclip == pytest.approx({1: norms[0], 2: norms[1]}, rel=1e-5)
    for got, want in zip(weights_of(model), history[-1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_keras_refuses_steps_per_execution_above_1_on_torch(tmp_path):
    x, y = data(8)
    model = mlp(keras.optimizers.SGD(0.1), steps_per_execution=4)
    with pytest.raises(ValueError, match="`steps_per_execution` must be 1 with the PyTorch backend"):
        model.fit(x, y, batch_size=2, verbose=0, callbacks=[kbc.GradientNorms(str(tmp_path), every=1)])


def test_nonfinite_gradients_are_counted_and_give_no_maximum(tmp_path):
    x, y = data(8)
    x[0, 0] = np.nan  # the step's loss and gradients are NaN
    model = mlp(keras.optimizers.SGD(0.1))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    run = str(tmp_path / "train")
    assert scalar_series(run, "nonfinite/grad_steps")[1] == 1
    assert np.isnan(scalar_series(run, "grad_global/norm")[1])
    assert "grad_global/norm_max" not in {t for t, _ in tag_step_counts(run)}  # no finite step: no maximum


def test_a_train_step_that_never_calls_apply_writes_no_gradient_number_and_says_so(tmp_path):
    class ManualSGD(keras.Model):
        def train_step(self, data):  # updates the weights itself: the tap cannot fire
            for weight in self.trainable_variables:
                weight.assign(weight * 0.999)
            return {}

    inputs = keras.Input((6,))
    model = ManualSGD(inputs, keras.layers.Dense(3)(inputs))
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    x, y = data()
    with pytest.warns(RuntimeWarning, match="no gradient was recorded in step 1,"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    assert not [t for t, _ in tag_step_counts(str(tmp_path / "train")) if t.startswith("grad_")]


def test_record_gradients_in_a_custom_torch_loop(tmp_path):
    import torch

    x, y = data(16)
    model = mlp(keras.optimizers.SGD(0.1))
    _, history = sgd_steps(weights_of(model), x, y, 8, 0.1, np.inf)
    expected = layer_norms(model, torch_grads(history[1], x[8:], y[8:]))  # the logged step 2
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    callbacks = keras.callbacks.CallbackList([kbc.GradientNorms(str(tmp_path), every=2, figures=False)], model=model)
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(0)
    for i in range(2):
        callbacks.on_train_batch_begin(i)
        loss = keras.ops.mean(LOSS(y[i * 8:(i + 1) * 8], model(x[i * 8:(i + 1) * 8], training=True)))
        grads = torch.autograd.grad(loss, [v.value for v in model.trainable_variables])
        kbc.record_gradients(model, grads, model.trainable_variables)
        with torch.no_grad():
            optimizer.apply(grads, model.trainable_variables)
    callbacks.on_epoch_end(0, {})
    callbacks.on_train_end()
    assert scalar_series(str(tmp_path / "train"), "grad_norm/logits")[2] == pytest.approx(expected["logits"], rel=1e-5)


def test_a_fit_ended_by_a_callback_error_leaves_a_bare_fit_working(tmp_path):
    class Boom(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("boom")

    x, y = data()
    model = mlp(keras.optimizers.Adam(1e-2))
    with pytest.raises(RuntimeError, match="boom"):  # Keras skips on_train_end
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False), Boom()])
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert "apply" not in vars(model.optimizer)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1 + 2


def saved_optimizer_variable_count(path) -> int:
    import h5py

    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as handle:
        with h5py.File(handle, "r") as weights:
            return len(weights["optimizer"]["vars"].keys())


def test_keras_file_written_inside_a_fit_with_the_preset_loads_without_keras_bn(tmp_path):
    x, y = data()
    model = mlp(keras.optimizers.Adam(1e-2, global_clipnorm=1.0))
    path = str(tmp_path / "model.keras")
    callbacks = kbc.diagnostics(str(tmp_path / "logs"), every=1, figures=False)
    callbacks.append(keras.callbacks.ModelCheckpoint(path))  # saved while the taps are in the step
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)
    assert saved_optimizer_variable_count(path) == len(model.optimizer.variables)
    assert not any("keras_bn" in v.name for v in model.optimizer.variables)
    code = ("import sys, warnings, keras, numpy\n"
            "warnings.filterwarnings('error', message='.*variable loading')  # optimizer state must load\n"
            "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
            "assert 'keras_bn' not in sys.modules\n"
            "print(int(keras.ops.convert_to_numpy(m.optimizer.iterations)))\n")
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env,
                            cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "4"
    loaded = keras.saving.load_model(path)
    for got, want in zip(weights_of(loaded), weights_of(model)):
        np.testing.assert_array_equal(got, want)


def test_loss_scale_optimizer_norms_are_of_the_unscaled_gradients(tmp_path):
    x, y = data()
    model = mlp(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    expected = layer_norms(model, torch_grads(weights_of(model), x, y))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    for layer in LAYERS:
        assert scalar_series(str(tmp_path / "train"), f"grad_norm/{layer}")[1] == pytest.approx(expected[layer], rel=1e-5)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1


def test_observing_leaves_a_learning_rate_schedule_and_the_weights_unchanged(tmp_path):
    run = fit_observed_and_plain_on_a_schedule(tmp_path, label_dtype="int64")
    assert sorted(scalar_series(run, "grad_global/norm")) == [2, 4, 6, 8]
    assert scalar_series(run, "epoch_learning_rate") == pytest.approx({0: 0.2 * 0.5 ** 4, 1: 0.2 * 0.5 ** 8})


def test_update_ratio_is_the_measured_steps_weight_change(tmp_path):
    x, y = data(16)
    model = mlp(keras.optimizers.SGD(0.3))
    _, history = sgd_steps(weights_of(model), x, y, 8, 0.3, np.inf)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.UpdateRatio(str(tmp_path), every=1)])
    series = scalar_series(str(tmp_path / "train"), "update_ratio/logits")
    assert sorted(series) == [1, 2]  # each step's own update: snapshot one batch before, compared after it
    kernel, bias = [i for i, v in enumerate(model.trainable_variables) if v.path.startswith("logits")]
    for step in (1, 2):
        before, after = history[step - 1], history[step]
        update = np.sqrt(sum(np.sum((after[i] - before[i]) ** 2) for i in (kernel, bias)))
        weight = np.sqrt(sum(np.sum(before[i] ** 2) for i in (kernel, bias)))
        assert series[step] == pytest.approx(update / weight, rel=1e-4)
    for got, want in zip(weights_of(model), history[2]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_batchnorm_check_warns_for_a_last_batch_of_one(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_bn.build_dense((6,), [8], 3, norm="batch")
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    x, y = data(17)
    with pytest.warns(UserWarning, match="normalised each channel over 1 value"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[kbc.BatchNormCheck(str(tmp_path), every=1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # 16 samples in batches of 8: nothing to say
        other = keras_bn.build_dense((6,), [8], 3, norm="batch")
        other.compile(keras.optimizers.SGD(0.1), LOSS)
        other.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0,
                  callbacks=[kbc.BatchNormCheck(str(tmp_path / "b"), every=1)])


@pytest.mark.parametrize("batch_size", [2, 16])
def test_the_preset_writes_the_tensorflow_tags_and_the_doctor_sees_the_batch(tmp_path, batch_size):
    from keras_bn import doctor

    keras.utils.set_random_seed(0)
    model = keras_bn.build_dense((6,), [8], 3, norm="batch")
    model.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    x, y = data(34)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no tap left out of the torch step, no failed read
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, validation_data=(x, y),
                  callbacks=kbc.diagnostics(str(tmp_path), every=1))
    tags = {t for t, _ in tag_step_counts(str(tmp_path / "train"))}
    expected = {"batch_loss", "batch_accuracy", "epoch_loss", "epoch_accuracy", "epoch_learning_rate",
                "grad_global/norm", "grad_global/norm_max", "nonfinite/grad_steps", "figures/grad_norms",
                "custom_scalars__config__"}
    layers = ["block1_dense", "block1_bn", "logits"]
    expected |= {f"{q}/{layer}" for layer in layers for q in ("grad_norm", "update_ratio")}
    assert tags == expected
    steps = -(-34 // batch_size)
    assert sorted(scalar_series(str(tmp_path / "train"), "grad_global/norm")) == list(range(1, steps + 1))
    assert doctor.RunFacts.load(tmp_path).batch_size == batch_size  # the largest batch BN trained on
    rules = {f.rule for f in doctor.diagnose(tmp_path)}
    assert ("bn_small_batch" in rules) == (batch_size < 16)


def test_batch_metrics_are_the_logs_fit_passes_to_on_train_batch_end(tmp_path):
    assert_batch_logs_are_those_fit_passes(tmp_path)
