"""The training-step taps on JAX (keras_bn.callbacks._tap_state): numbers against jax.grad.

Run with ``KERAS_BACKEND=jax``; under any other backend the whole file skips. Every number a
callback writes is compared with an independent computation: ``jax.grad`` of the loss through
``model.stateless_call`` on the same weights, and a hand-written SGD loop for the steps of an
execution.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax",
                                reason="JAX taps: run with KERAS_BACKEND=jax (this run is "
                                       f"KERAS_BACKEND={keras.backend.backend()})")

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402
from tests._events import scalar_series, tag_step_counts  # noqa: E402
from tests._tap_mlp import LAYERS, LOSS, WrapsTheTrainFunction, assert_batch_logs_are_those_fit_passes, users_train_function, data, fit_observed_and_plain_on_a_schedule, layer_norms, mlp, weights_of  # noqa: E402


def jax_grads(model, weights, x, y):
    """Per-variable gradients of the mean loss at `weights`, by jax.grad (float64 on the host)."""
    import jax

    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable):
        y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, y_pred))

    return [np.asarray(g, np.float64) for g in jax.grad(loss)([keras.ops.convert_to_tensor(w) for w in weights])]


def test_gradient_norms_equal_jax_grad_before_and_after_clipping(tmp_path):
    x, y = data()
    model = mlp(keras.optimizers.SGD(0.1, global_clipnorm=0.05))
    expected = jax_grads(model, weights_of(model), x, y)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    run = str(tmp_path / "train")
    preclip = layer_norms(model, expected)
    global_norm = float(np.sqrt(sum(np.sum(g ** 2) for g in expected)))
    assert global_norm > 0.05  # the clip engaged, so applied and pre-clip norms differ
    for layer in LAYERS:
        assert scalar_series(run, f"grad_norm_preclip/{layer}")[1] == pytest.approx(preclip[layer], rel=1e-5)
        assert scalar_series(run, f"grad_norm/{layer}")[1] == pytest.approx(preclip[layer] * 0.05 / global_norm, rel=1e-5)
    assert scalar_series(run, "grad_global/norm_preclip")[1] == pytest.approx(global_norm, rel=1e-5)
    assert scalar_series(run, "grad_global/norm")[1] == pytest.approx(0.05, rel=1e-5)
    assert scalar_series(run, "grad_global/norm_max")[1] == pytest.approx(0.05, rel=1e-5)
    assert scalar_series(run, "grad_global/clip_fraction")[1] == 1.0
    assert scalar_series(run, "nonfinite/grad_steps")[1] == 0
    # The taps' variables are optimizer state only during the fit: afterwards Keras' own list.
    assert not any(v.name.startswith("keras_bn") for v in model.optimizer.variables)


def test_a_train_function_of_the_users_own_is_kept_and_its_norms_equal_jax_grad(tmp_path):
    """keras-bn calls the function the user assigned to model.train_function at every step
    (before, it put Keras' own in its place for the fit) and measures the steps it runs."""
    x, y = data()
    model = mlp(keras.optimizers.SGD(0.1))
    expected = jax_grads(model, weights_of(model), x[:16], y[:16])
    train_function, calls = users_train_function(model)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    steps = len(x) // 16
    assert len(calls) == steps and model.train_function is train_function
    logged = scalar_series(str(tmp_path / "train"), "grad_global/norm")
    assert sorted(logged) == list(range(1, steps + 1))
    assert logged[1] == pytest.approx(float(np.sqrt(sum(np.sum(g ** 2) for g in expected))), rel=1e-5)


def test_a_users_callback_wrapping_the_train_function_each_batch_traces_the_step_once(tmp_path):
    """Before, keras-bn saw a function not its own at every batch and made its train function
    anew: a new XLA compilation per step, until LLVM ran out of memory."""
    from keras_bn.callbacks._taps import StepTaps

    x, y = data()
    model = mlp(keras.optimizers.SGD(0.1))
    expected = jax_grads(model, weights_of(model), x[:8], y[:8])
    user = WrapsTheTrainFunction()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False), user])
    steps = len(x) // 8
    assert user.calls == steps
    assert StepTaps.of(model).gradient_tap(model.optimizer).traced_records == 1
    logged = scalar_series(str(tmp_path / "train"), "grad_global/norm")
    assert sorted(logged) == list(range(1, steps + 1))
    assert logged[1] == pytest.approx(float(np.sqrt(sum(np.sum(g ** 2) for g in expected))), rel=1e-5)


def sgd_steps(model, x, y, batch, lr, clip):
    """A hand-written SGD with global-norm clipping: each step's pre-clip global norm."""
    weights = weights_of(model)
    norms = []
    for start in range(0, len(x), batch):
        grads = jax_grads(model, weights, x[start:start + batch], y[start:start + batch])
        norm = float(np.sqrt(sum(np.sum(g ** 2) for g in grads)))
        norms.append(norm)
        scale = min(1.0, clip / norm)
        weights = [w - lr * scale * g for w, g in zip(weights, grads)]
    return norms, weights


def test_steps_per_execution_4_summarizes_every_step_since_the_last_read(tmp_path):
    x, y = data(16)
    probe = mlp(keras.optimizers.SGD(0.5))
    unclipped, _ = sgd_steps(probe, x, y, 4, 0.5, np.inf)
    clip = float(np.median(unclipped))  # some steps clip, some do not
    model = mlp(keras.optimizers.SGD(0.5, global_clipnorm=clip), steps_per_execution=4)
    norms, final = sgd_steps(model, x, y, 4, 0.5, clip)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=4, figures=False)])
    run = str(tmp_path / "train")
    assert tag_step_counts(run)[("grad_global/norm", 4)] == 1  # one read, after the 4 steps
    clipped = sum(n > clip for n in norms)
    assert 0 < clipped < 4
    assert scalar_series(run, "grad_global/clip_fraction")[4] == clipped / 4
    assert scalar_series(run, "grad_global/norm_max")[4] == pytest.approx(max(min(n, clip) for n in norms), rel=1e-5)
    assert scalar_series(run, "grad_global/norm_preclip")[4] == pytest.approx(norms[-1], rel=1e-5)  # the last step's
    for got, want in zip(weights_of(model), final):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_train_step_that_never_calls_apply_writes_no_gradient_number_and_says_so(tmp_path):
    class ManualSGD(keras.Model):
        def train_step(self, state, data):  # updates the weights itself: the tap cannot fire
            trainable, non_trainable, optimizer_values, metrics = state
            x, y = data
            return {}, ([w * 0.999 for w in trainable], non_trainable, optimizer_values, metrics)

    inputs = keras.Input((6,))
    model = ManualSGD(inputs, keras.layers.Dense(3)(inputs))
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    x, y = data()
    with pytest.warns(RuntimeWarning, match="no gradient was recorded in step 1,"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    assert not [t for t, _ in tag_step_counts(str(tmp_path / "train")) if t.startswith("grad_")]


def test_a_fit_ended_by_a_callback_error_leaves_a_bare_fit_working(tmp_path):
    class Boom(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("boom")

    x, y = data()
    model = mlp(keras.optimizers.Adam(1e-2))
    with pytest.raises(RuntimeError, match="boom"):  # Keras skips on_train_end: the taps stay attached
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False), Boom()])
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # the first step finds and drops them
    assert np.isfinite(history.history["loss"][0])
    assert not any(v.name.startswith("keras_bn") for v in model.optimizer.variables)
    assert int(np.asarray(model.optimizer.iterations.value)) == 1 + 2


def saved_optimizer_variable_count(path) -> int:
    import h5py

    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as handle:
        with h5py.File(handle, "r") as weights:
            group = weights["optimizer"]["vars"]
            return len(group.keys())


def test_keras_file_written_inside_a_fit_with_the_preset_loads_without_keras_bn(tmp_path):
    x, y = data()
    model = mlp(keras.optimizers.Adam(1e-2, global_clipnorm=1.0))
    path = str(tmp_path / "model.keras")
    callbacks = kbc.diagnostics(str(tmp_path / "logs"), every=1, figures=False)
    callbacks.append(keras.callbacks.ModelCheckpoint(path))  # saved while the taps are attached
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)
    assert saved_optimizer_variable_count(path) == len(model.optimizer.variables)
    code = ("import sys, warnings, keras, numpy\n"
            "warnings.filterwarnings('error', message='.*variable loading')  # optimizer state must load\n"
            "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
            "assert 'keras_bn' not in sys.modules\n"
            "print(int(numpy.asarray(m.optimizer.iterations.value)))\n")
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env,
                            cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "4"
    loaded = keras.saving.load_model(path)
    for got, want in zip(loaded.trainable_variables, model.trainable_variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_loss_scale_optimizer_norms_are_of_the_unscaled_gradients(tmp_path):
    x, y = data()
    model = mlp(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    expected = layer_norms(model, jax_grads(model, weights_of(model), x, y))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    for layer in LAYERS:
        assert scalar_series(str(tmp_path / "train"), f"grad_norm/{layer}")[1] == pytest.approx(expected[layer], rel=1e-5)
    assert int(model.optimizer.iterations.numpy()) == 1


def test_observing_leaves_a_learning_rate_schedule_and_the_weights_unchanged(tmp_path):
    run = fit_observed_and_plain_on_a_schedule(tmp_path)
    assert sorted(scalar_series(run, "update_ratio/logits")) == [2, 4, 6, 8]  # each logged step's own update, as on TensorFlow
    assert scalar_series(run, "epoch_learning_rate") == pytest.approx({0: 0.2 * 0.5 ** 4, 1: 0.2 * 0.5 ** 8})


def test_update_ratio_is_the_weight_change_of_the_logged_step(tmp_path):
    x, y = data(8)
    model = mlp(keras.optimizers.SGD(0.3))
    first = weights_of(model)
    first_grads = jax_grads(model, first, x, y)
    after_first = [w - 0.3 * g for w, g in zip(first, first_grads)]
    grads = jax_grads(model, after_first, x, y)
    state = []  # nothing of the update ratio rides in the jitted step's state

    class OptimizerState(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            state.append(sorted(v.name for v in self.model.optimizer.variables if v.name.startswith("keras_bn")))

    model.fit(np.concatenate([x, x]), np.concatenate([y, y]), batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.UpdateRatio(str(tmp_path), every=1), OptimizerState()])
    assert state == [[], []]
    series = scalar_series(str(tmp_path / "train"), "update_ratio/logits")
    assert sorted(series) == [1, 2]  # each step's own update, logged at that step
    kernel, bias = [i for i, v in enumerate(model.trainable_variables) if v.path.startswith("logits")]
    for step, step_grads, before in ((1, first_grads, first), (2, grads, after_first)):
        update = np.sqrt(sum(np.sum((0.3 * step_grads[i]) ** 2) for i in (kernel, bias)))
        weight = np.sqrt(sum(np.sum(before[i].astype(np.float64) ** 2) for i in (kernel, bias)))
        assert series[step] == pytest.approx(update / weight, rel=1e-4)


def test_record_gradients_in_a_jitted_jax_grad_loop(tmp_path):
    import jax

    x, y = data(16)
    model = mlp(keras.optimizers.SGD(0.1))
    _, after_first_step = sgd_steps(model, x[:8], y[:8], 8, 0.1, np.inf)
    expected = layer_norms(model, jax_grads(model, after_first_step, x[8:], y[8:]))  # the logged step 2
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    callbacks = keras.callbacks.CallbackList([kbc.GradientNorms(str(tmp_path), every=2, figures=False)], model=model)
    callbacks.on_train_begin()  # the tap's variables join optimizer.variables here
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_fn(trainable, xb, yb):
        y_pred, _ = model.stateless_call(trainable, non_trainable, xb, training=True)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(yb, y_pred))

    @jax.jit
    def step(trainable, optimizer_values, xb, yb):
        grads = jax.grad(loss_fn)(trainable, xb, yb)
        optimizer_values = kbc.record_gradients(model, grads, trainable, optimizer_values)
        return optimizer.stateless_apply(optimizer_values, grads, trainable)

    trainable = [v.value for v in model.trainable_variables]
    optimizer_values = [v.value for v in optimizer.variables]
    callbacks.on_epoch_begin(0)
    for i in range(2):
        callbacks.on_train_batch_begin(i)
        trainable, optimizer_values = step(trainable, optimizer_values, x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8])
        for variable, value in zip(model.trainable_variables, trainable):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, optimizer_values):
            variable.assign(value)
    callbacks.on_epoch_end(0, {})
    callbacks.on_train_end()
    got = scalar_series(str(tmp_path / "train"), "grad_norm/logits")
    assert got[2] == pytest.approx(expected["logits"], rel=1e-5)
    with pytest.raises(ValueError, match="optimizer_variables=None"):
        callbacks.on_train_begin()
        try:
            jax.jit(lambda g: kbc.record_gradients(model, [g] * len(trainable), trainable))(trainable[0])
        finally:
            callbacks.on_train_end()


def test_batchnorm_check_warns_for_a_last_batch_of_one_from_the_traced_shape(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_bn.build_dense((6,), [8], 3, norm="batch")
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    x, y = data(17)
    with pytest.warns(UserWarning, match="normalised each channel over 1 value"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[kbc.BatchNormCheck(str(tmp_path), every=1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16 samples in batches of 8: nothing to say
        other = keras_bn.build_dense((6,), [8], 3, norm="batch")
        other.compile(keras.optimizers.SGD(0.1), LOSS)
        other.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0,
                  callbacks=[kbc.BatchNormCheck(str(tmp_path / "b"), every=1)])


@pytest.mark.parametrize("batch_size", [2, 16])
def test_the_doctor_sees_the_batch_bn_trains_on_from_the_traced_shape(tmp_path, batch_size):
    """The Doctor's BN batch-size fact on JAX: the jitted step's static batch (the last batch of
    the epoch is smaller, and traced too: the fact is the largest), and its rule fires at 2."""
    from keras_bn import doctor

    keras.utils.set_random_seed(0)
    model = keras_bn.build_dense((6,), [8], 3, norm="batch")
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    x, y = data(34)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no tap left out of the JAX step
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0,
                  callbacks=kbc.diagnostics(str(tmp_path), every=1, figures=False))
    assert doctor.RunFacts.load(tmp_path).batch_size == batch_size
    rules = {f.rule for f in doctor.diagnose(tmp_path)}
    assert ("bn_small_batch" in rules) == (batch_size < 16)


def test_the_preset_writes_the_tensorflow_tags_on_jax(tmp_path):
    x, y = data()
    model = mlp(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y),
              callbacks=kbc.diagnostics(str(tmp_path), every=1))
    tags = {t for t, _ in tag_step_counts(str(tmp_path / "train"))}
    expected = {"batch_loss", "batch_accuracy", "epoch_loss", "epoch_accuracy", "epoch_learning_rate",
                "grad_global/norm", "grad_global/norm_max", "nonfinite/grad_steps", "figures/grad_norms",
                "custom_scalars__config__"}
    expected |= {f"{q}/{layer}" for layer in LAYERS for q in ("grad_norm", "update_ratio")}
    assert tags == expected
    assert sorted(scalar_series(str(tmp_path / "train"), "grad_global/norm")) == [1, 2]


DATA_PARALLEL_CHILD = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, keras, numpy as np
sys.path.insert(0, sys.argv[2])
from tests.test_backend_jax_taps import data, jax_grads, layer_norms, mlp, weights_of
from tests._events import scalar_series
import keras_bn.callbacks as kbc
assert len(jax.devices()) == 2, jax.devices()
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
x, y = data(16)
model = mlp(keras.optimizers.SGD(0.1))
expected = layer_norms(model, jax_grads(model, weights_of(model), x, y))
model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
          callbacks=[kbc.GradientNorms(sys.argv[1], every=1, figures=False)])
for layer, norm in expected.items():
    got = scalar_series(sys.argv[1] + "/train", "grad_norm/" + layer)[1]
    assert abs(got - norm) <= 1e-5 * norm, (layer, got, norm)
print("global-batch norms ok")
"""


def test_data_parallel_on_two_host_devices_logs_the_global_batch_norms(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", DATA_PARALLEL_CHILD, str(tmp_path), root], capture_output=True,
                            text=True, env=env, cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global-batch norms ok" in result.stdout


def test_the_preset_syncs_the_training_state_per_hook_not_per_step_and_reads_the_probe_without_compiling(tmp_path):
    """On JAX every read of `Callback.model` syncs the whole training state into the variables,
    and an eager `ops.cond` compiles anew at each call: neither may happen per step or per read."""
    import logging

    import jax

    x, y = data(n=64)
    model = mlp(keras.optimizers.SGD(0.05))
    syncs = []
    original = model.jax_state_sync
    model.jax_state_sync = lambda *a, **k: (syncs.append(1), original(*a, **k))[1]
    callbacks = kbc.diagnostics(str(tmp_path / "run"), probe=x[:16], every=100, figures=False)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=callbacks)  # traces and compiles
    compiles = []

    class Count(logging.Handler):
        def emit(self, record):
            if "compil" in record.getMessage().lower():
                compiles.append(record.getMessage())

    per_fit = {}
    handler = Count()
    logging.getLogger("jax").addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:
        for batch_size in (4, 4, 2):  # 16, 16 and 32 steps (the last one compiles a new step)
            before, compiled = len(syncs), len(compiles)
            model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=callbacks)
            per_fit.setdefault(batch_size, []).append((len(syncs) - before, len(compiles) - compiled))
    finally:
        jax.config.update("jax_log_compiles", False)
        logging.getLogger("jax").removeHandler(handler)
    assert per_fit[4][1][1] == 0, compiles[:3]  # the same shapes again: the probe read compiles nothing
    assert per_fit[4][0][0] == per_fit[4][1][0] == per_fit[2][0][0]  # twice the steps, no more syncs
    scalars = keras_bn.events.read_run_details(str(tmp_path / "run" / "train")).scalars
    means = [tag for tag in scalars if tag.startswith("activation_mean/")]
    assert means and sorted(dict(scalars[means[0]].pairs())) == [16, 32, 48, 80]  # the probe read in every fit


def test_the_taps_patch_only_while_jax_traces_the_step_and_the_norms_stay_those_of_jax_grad(tmp_path):
    """No tap code runs in a step that does not trace: 5 steps of 4 and a last one of 2 samples
    trace twice, so every tap patches twice; the last step (the retraced shape) is still measured."""
    from keras_bn.callbacks._gradient_tap import GradientTap

    x, y = data(22)
    model = mlp(keras.optimizers.SGD(0.1))
    _, final = sgd_steps(model, x[:20], y[:20], 4, 0.1, np.inf)
    expected = jax_grads(model, final, x[20:], y[20:])
    patches = []
    original = GradientTap.patch
    GradientTap.patch = lambda self: (patches.append(1), original(self))[1]
    try:
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
                  callbacks=kbc.diagnostics(str(tmp_path), every=100, figures=False))
    finally:
        GradientTap.patch = original
    assert len(patches) == 2  # one per traced shape (4 and 2), not one per step (6)
    assert model.optimizer.apply.__func__ is type(model.optimizer).apply  # nothing left patched
    norms = layer_norms(model, expected)
    for layer in LAYERS:
        assert scalar_series(str(tmp_path / "train"), f"grad_norm/{layer}")[6] == pytest.approx(norms[layer], rel=1e-5)


def test_keras_dispatches_batch_ends_asynchronously_with_the_preset(tmp_path):
    """JAX dispatches the next batch while callbacks' batch ends run on a worker thread, unless a
    callback overrides a batch-end hook: none of the preset's may (the control below does)."""
    import threading

    class BatchEndThread(keras.callbacks.Callback):
        async_safe = True  # itself no reason to turn asynchronous dispatch off

        def __init__(self):
            super().__init__()
            self.threads = set()

        def on_train_batch_end(self, batch, logs=None):
            self.threads.add(threading.get_ident())

    class SyncBatchEnd(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    x, y = data(32)
    model = mlp(keras.optimizers.SGD(0.1))
    for extra, asynchronous in (([], True), ([SyncBatchEnd()], False)):
        probe = BatchEndThread()
        callbacks = kbc.diagnostics(str(tmp_path), probe=x[:8], every=2, figures=False) + extra + [probe]
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=callbacks)
        assert (threading.get_ident() not in probe.threads) is asynchronous, extra


def test_the_fused_per_variable_sums_of_squares_equal_numpy():
    """JAX sums every gradient's squares in one reduction (rows of 128, then a segment sum)."""
    from keras_bn.callbacks._gradient_tap import _sumsq_per_variable

    rng = np.random.default_rng(5)
    shapes = {0: (), 1: (3, 5), 2: (128,), 4: (129, 7), 5: (0, 4), 6: (2, 3, 300)}
    values = {i: (rng.normal(size=shape) * 10.0 ** (i - 3)).astype("float32") for i, shape in shapes.items()}
    got = np.asarray(_sumsq_per_variable({i: keras.ops.convert_to_tensor(v) for i, v in values.items()}, 8))
    want = [np.sum(values[i].astype(np.float64) ** 2) if i in values else 0.0 for i in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[3] == got[7] == 0.0  # no gradient for those variables


@pytest.mark.parametrize("state_readable", [True, False], ids=["unsynced_state", "fallback_sync"])
def test_the_presets_reads_take_the_trainer_state_without_syncing_and_match_a_hand_loop(tmp_path, monkeypatch, state_readable):
    """Mid-epoch the preset reads the gradient tap, the metrics and the weights from the JAX
    trainer's unsynced state: as many syncs with a read every 2 steps as with none, and every
    number that of a hand-written SGD loop (the peak reset after each read included). Where
    that state cannot be read (a Keras that moved it), the reads sync, with the same numbers."""
    from keras_bn import _keras_internals as internals

    if not state_readable:
        monkeypatch.setattr(internals, "unsynced_jax_state", lambda *args: None)
    x, y = data(32)
    lr, batch = 0.5, 2
    reference = mlp(keras.optimizers.SGD(lr))
    weights, norms, losses, ratios = weights_of(reference), [], [], []
    for start in range(0, len(x), batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        y_pred, _ = reference.stateless_call(weights, [], xb, training=True)
        losses.append(float(LOSS(yb, y_pred)))
        grads = jax_grads(reference, weights, xb, yb)
        norms.append(float(np.sqrt(sum(np.sum(g ** 2) for g in grads))))
        logits = [i for i, v in enumerate(reference.trainable_variables) if v.path.startswith("logits")]
        ratios.append(np.sqrt(sum(np.sum((lr * grads[i]) ** 2) for i in logits))
                      / np.sqrt(sum(np.sum(weights[i].astype(np.float64) ** 2) for i in logits)))
        weights = [w - lr * g for w, g in zip(weights, grads)]

    def fit(every, log_dir):
        model = mlp(keras.optimizers.SGD(lr), metrics=["accuracy"])
        syncs = []
        original = model.jax_state_sync
        model.jax_state_sync = lambda: (syncs.append(not model._jax_state_synced), original())[1]
        callbacks = kbc.diagnostics(log_dir, every=every, figures=False)
        # GradientNorms first: no other read syncs before its own (the fallback must sync itself).
        callbacks.sort(key=lambda callback: not isinstance(callback, kbc.GradientNorms))
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        return model, sum(syncs)

    _, syncs_without_reads = fit(10**6, str(tmp_path / "none"))
    model, syncs = fit(2, str(tmp_path / "run"))
    assert syncs == syncs_without_reads if state_readable else syncs > syncs_without_reads
    run = str(tmp_path / "run" / "train")
    steps = range(2, 16, 2)  # read at the batch begins (16 at the epoch end, after Keras' sync)
    norm, norm_max = scalar_series(run, "grad_global/norm"), scalar_series(run, "grad_global/norm_max")
    loss, ratio = scalar_series(run, "batch_loss"), scalar_series(run, "update_ratio/logits")
    assert max(norms[2:4]) != max(norms[:4])  # a peak not reset would show
    for step in steps:
        assert norm[step] == pytest.approx(norms[step - 1], rel=1e-5)
        assert norm_max[step] == pytest.approx(max(norms[step - 2:step]), rel=1e-5)
        assert loss[step] == pytest.approx(np.mean(losses[:step]), rel=1e-5)
        assert ratio[step] == pytest.approx(ratios[step - 1], rel=1e-4)  # the update of the logged step
    for got, want in zip(weights_of(model), weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_tap_counts_stay_exact_with_two_reads_per_batch_and_host_rebases(tmp_path, monkeypatch):
    """On JAX a read's reset reaches the state at the next step (`TapState.set`): a second read
    in the same batch sees it, so counts moved to the host (from COUNT_REBASE, here 2) are
    counted once."""
    from keras_bn.callbacks import _gradient_tap
    from keras_bn.callbacks._taps import StepTaps

    monkeypatch.setattr(_gradient_tap, "COUNT_REBASE", 2)
    x, y = data(32)
    model = mlp(keras.optimizers.SGD(0.1))
    seen = []

    class ReadAgain(keras.callbacks.Callback):
        async_safe = True

        def on_train_batch_begin(self, batch, logs=None):
            tap = StepTaps.of(model).current_gradient_tap()
            seen.append((batch, tap.read()["fired_steps"], tap.read()["fired_steps"]))

    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False), ReadAgain()])
    assert seen == [(b, b, b) for b in range(8)]
    assert StepTaps.of(model).gradient_tap(model.optimizer).read()["fired_steps"] == 8


def test_batch_metrics_are_the_logs_fit_passes_to_on_train_batch_end(tmp_path):
    assert_batch_logs_are_those_fit_passes(tmp_path)
