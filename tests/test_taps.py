"""The tap owner (keras_bn.callbacks._taps): taps that prove they fired, custom training loops,
patches that exist only while a step runs, and one traced step kept across fits."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402
from keras_bn.callbacks._taps import StepTaps  # noqa: E402
from tests._events import scalar_series, tag_step_counts  # noqa: E402
from tests._tap_mlp import WrapsTheTrainFunction, users_train_function  # noqa: E402

LOSS = "sparse_categorical_crossentropy"


def mlp(norm=None, seed=3):
    keras.utils.set_random_seed(seed)
    model = keras_bn.build_dense((6,), [8, 8], 3, norm=norm)
    model.compile(keras.optimizers.SGD(0.05), LOSS)
    return model


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), (np.arange(n) % 3).astype("int32")


def tape_global_norm(model, x, y):
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    return float(np.sqrt(sum(np.sum(np.square(g.numpy().astype(np.float64))) for g in grads)))


def custom_loop(model, callbacks, x, y, step_fn, batch=8):
    cbs = keras.callbacks.CallbackList(callbacks, model=model)
    cbs.on_train_begin()
    cbs.on_epoch_begin(0)
    for i in range(len(x) // batch):
        cbs.on_train_batch_begin(i)
        step_fn(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
        cbs.on_train_batch_end(i)
    cbs.on_epoch_end(0, {})
    cbs.on_train_end()


def make_step(model, record):
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        if record:
            kbc.record_gradients(model, grads, model.trainable_variables)
        model.optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


def test_custom_loop_traced_before_the_callbacks_writes_no_gradient_number_and_warns_once(tmp_path):
    model = mlp()
    x, y = data(32)
    step = make_step(model, record=False)
    step(x[:8], y[:8])  # traced (and one step taken) before any callback attached
    callback = kbc.GradientNorms(str(tmp_path), every=1, figures=False)
    with pytest.warns(RuntimeWarning, match=r"no gradient was recorded.*record_gradients") as caught:
        custom_loop(model, [callback], x, y, step)
    assert len([w for w in caught if "no gradient was recorded" in str(w.message)]) == 1
    counts = tag_step_counts(tmp_path / "train") if (tmp_path / "train").exists() else {}
    assert not [tag for tag, _ in counts if tag.startswith("grad_")]
    assert callback.unmeasured_steps == 4


def test_custom_loop_with_record_gradients_logs_the_gradient_tape_norms(tmp_path):
    model = mlp()
    x, y = data(32)
    expected = {}
    callback = kbc.GradientNorms(str(tmp_path), every=1, figures=False)
    cbs = keras.callbacks.CallbackList([callback], model=model)
    cbs.on_train_begin()
    step = make_step(model, record=True)  # traced after the callbacks began
    for i in range(4):
        xb, yb = x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]
        expected[i + 1] = tape_global_norm(model, xb, yb)
        cbs.on_train_batch_begin(i)
        step(xb, yb)
        cbs.on_train_batch_end(i)
    cbs.on_epoch_end(0, {})
    cbs.on_train_end()
    logged = scalar_series(tmp_path / "train", "grad_global/norm")
    assert sorted(logged) == [1, 2, 3, 4]
    for s, value in expected.items():
        assert logged[s] == pytest.approx(value, rel=1e-5)


def test_record_gradients_without_a_callback_warns_and_records_nothing():
    model = mlp()
    x, y = data(8)
    step = make_step(model, record=True)
    with pytest.warns(UserWarning, match="no GradientNorms callback has begun"):
        step(x, y)


class _RaiseAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.step:
            raise RuntimeError("user callback failed")


@pytest.mark.parametrize("wraps", [False, True], ids=["plain", "functools_wraps"])
def test_a_train_function_of_the_users_own_is_kept_and_its_steps_are_measured(tmp_path, wraps):
    """keras-bn calls the function the user assigned at every step (never Keras' own in its
    place, even when functools.wraps made it look like Keras'), and the norms are of its steps."""
    model = mlp()
    x, y = data(32)
    expected = tape_global_norm(model, x[:8], y[:8])
    function, calls = users_train_function(model, wraps)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    assert len(calls) == 4
    assert model.train_function is function
    logged = scalar_series(tmp_path / "train", "grad_global/norm")
    assert sorted(logged) == [1, 2, 3, 4]
    assert logged[1] == pytest.approx(expected, rel=1e-5)


def test_a_users_train_function_traced_before_the_taps_runs_unmeasured_and_says_why(tmp_path):
    model = mlp()
    x, y = data(32)
    function, calls = users_train_function(model, wraps=False)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # traces Keras' step inside it, without taps
    callback = kbc.GradientNorms(str(tmp_path), every=1, figures=False)
    with pytest.warns(RuntimeWarning, match=r"no gradient was recorded in step 5,.*a function of your own"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert len(calls) == 8 and model.train_function is function
    counts = tag_step_counts(tmp_path / "train") if (tmp_path / "train").exists() else {}
    assert not [tag for tag, _ in counts if tag.startswith("grad_")]


@pytest.mark.parametrize("order", ["after", "before"])
def test_a_users_callback_wrapping_the_train_function_each_batch_keeps_both_and_traces_once(tmp_path, order):
    """Before, keras-bn saw a function not its own at every batch and made its train function
    anew: a new trace per step (XLA's compiler ran out of memory on JAX)."""
    model = mlp()
    x, y = data(32)
    expected = tape_global_norm(model, x[:8], y[:8])
    for run in range(2):
        user = WrapsTheTrainFunction()
        norms = kbc.GradientNorms(str(tmp_path / f"run{run}"), every=1, figures=False)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                  callbacks=[norms, user] if order == "after" else [user, norms])
        assert int(model.optimizer.iterations.numpy()) == 4 * (run + 1)  # each step ran once
        # Under keras-bn's wrapper (order "before"), the user's callback finds that wrapper on top
        # at the next batch and wraps it too, as its code says: its first wrapper then runs inside.
        assert user.calls == 4 if order == "after" else 4 <= user.calls <= 8
        logged = scalar_series(tmp_path / f"run{run}" / "train", "grad_global/norm")
        assert sorted(logged) == [4 * run + s for s in (1, 2, 3, 4)]
        if run == 0:
            assert logged[1] == pytest.approx(expected, rel=1e-5)
    assert StepTaps.of(model).gradient_tap(model.optimizer).traced_records == 1
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # a bare fit after them works


def test_a_user_callback_raising_mid_epoch_leaves_nothing_patched(tmp_path):
    model = mlp(norm="batch")
    x, y = data(64)
    bn_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    callbacks = kbc.diagnostics(str(tmp_path), every=1, figures=False) + [_RaiseAt(2)]
    with pytest.raises(RuntimeError, match="user callback failed"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=callbacks)
    assert "apply" not in vars(model.optimizer)
    assert all("call" not in vars(layer) for layer in bn_layers)
    # A later fit without keras-bn callbacks runs Keras' own step: the taps stay still.
    tap = StepTaps.of(model).gradient_tap(model.optimizer)
    fired = tap.read()["fired_steps"]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert tap.read()["fired_steps"] == fired
    assert StepTaps.of(model)._wrapper is None


def test_a_failing_step_ends_every_callback_and_restores_the_optimizer(tmp_path):
    model = mlp()
    x, y = data(32)

    def batches():
        for i in range(3):
            yield x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4]
        raise ValueError("pipeline broke")

    callbacks = kbc.diagnostics(str(tmp_path), every=1, figures=False)
    with pytest.raises(Exception, match="pipeline broke"):
        model.fit(batches(), epochs=1, verbose=0, callbacks=callbacks)
    assert "apply" not in vars(model.optimizer)
    assert StepTaps.of(model).members == []
    assert sorted(scalar_series(tmp_path / "train", "grad_global/norm")) == [1, 2, 3]


def test_the_instrumented_step_is_traced_once_across_fits_and_new_callbacks(tmp_path):
    model = mlp()
    x, y = data(32)
    for run in range(3):
        callbacks = kbc.diagnostics(str(tmp_path / f"run{run}"), every=2, figures=False)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
    owner = StepTaps.of(model)
    (keras_function, _, _), = owner._traced.values()
    assert owner.gradient_tap(model.optimizer).traced_records == 1  # one trace for three fits
    assert model.train_function is keras_function  # Keras' own function is back after each fit
    for run in range(3):
        assert sorted(scalar_series(tmp_path / f"run{run}" / "train", "grad_global/norm")) == [4 * run + 2, 4 * run + 4]


def _counting_train_step(model):
    traces = []
    keras_step = model.train_step

    def train_step(data):
        traces.append(1)  # Python runs only while TensorFlow traces the step
        return keras_step(data)

    model.train_step = train_step
    return traces


@pytest.mark.parametrize("labels", ["sparse", "one_hot"])
def test_a_new_models_step_is_traced_once_with_the_same_weights_and_metrics_as_bare(tmp_path, labels):
    """Keras creates the Adam slots and the metrics' variables inside the first traced step, so
    TensorFlow traces a new model's step twice; the taps build them first, from the dataset's
    element_spec: one trace, and every number as without keras-bn ("accuracy" resolves to the
    same metric for sparse and one-hot labels)."""
    x, y = data(32)
    if labels == "one_hot":
        y = keras.utils.to_categorical(y, 3)
    fits = {}
    for name in ("bare", "preset"):
        keras.utils.set_random_seed(3)
        model = keras_bn.build_dense((6,), [8, 8], 3, norm="batch")
        model.compile(keras.optimizers.Adam(0.01), LOSS if labels == "sparse" else "categorical_crossentropy",
                      metrics=["accuracy"])
        traces = _counting_train_step(model)
        callbacks = kbc.diagnostics(str(tmp_path / name), every=2, figures=False) if name == "preset" else []
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        fits[name] = (len(traces), history.history, [w.numpy() for w in model.weights])
    assert fits["bare"][0] == 2 and fits["preset"][0] == 1  # Keras' own double trace is the control
    assert fits["preset"][1].keys() == fits["bare"][1].keys() == {"accuracy", "loss"}
    for key, values in fits["bare"][1].items():
        assert fits["preset"][1][key] == pytest.approx(values, rel=1e-6), key
    for bare, preset in zip(fits["bare"][2], fits["preset"][2]):
        np.testing.assert_allclose(preset, bare, rtol=1e-6, atol=1e-7)


def test_a_dataset_of_ragged_inputs_keeps_keras_own_build(tmp_path):
    """Anything but dense tensors in the element_spec: nothing is built before the trace."""
    from keras_bn import _keras_internals as internals

    model = mlp()
    ragged = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1.0], [2.0, 3.0]])).batch(2)
    assert internals.build_from_dataset_spec(model, iter(ragged)) is False
    assert not model.optimizer.built


@pytest.mark.parametrize("setting", [{"jit_compile": True}, {"steps_per_execution": 2}])
def test_taps_fire_once_per_step_under_xla_and_steps_per_execution(tmp_path, setting):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), LOSS, **setting)
    x, y = data(32)
    expected_first = tape_global_norm(model, x[:8], y[:8])
    callback = kbc.GradientNorms(str(tmp_path), every=1, figures=False)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    tap = StepTaps.of(model).gradient_tap(model.optimizer)
    assert tap.read()["fired_steps"] == 4 == int(model.optimizer.iterations.numpy())
    logged = scalar_series(tmp_path / "train", "grad_global/norm")
    if "jit_compile" in setting:
        assert logged[1] == pytest.approx(expected_first, rel=1e-5)
    else:  # one host read per execution of 2 steps: steps 2 and 4
        assert sorted(logged) == [2, 4]


def test_observing_does_not_move_keras_clipping_under_a_strategy(tmp_path):
    """One-device MirroredStrategy: the tap reads the summed gradient, Keras keeps clipping each
    replica's share (no pre-clip tags, since no unclipped sum exists), and nothing stays patched."""
    from keras_bn import distribute

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = keras_bn.build_dense((6,), [8], 3)
        optimizer = keras.optimizers.Adam(1e-3, clipnorm=1e-3)
        model.compile(optimizer=optimizer, loss=LOSS)
    x, y = data(32)
    callback = kbc.GradientNorms(str(tmp_path), every=1, figures=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    counts = tag_step_counts(tmp_path / "train")
    assert sorted(scalar_series(tmp_path / "train", "grad_global/norm")) == [1, 2]
    assert not [tag for tag, _ in counts if "preclip" in tag or "clip_fraction" in tag]
    assert max(callback.latest_norms.values()) <= 1e-3 * np.sqrt(2) * (1 + 1e-5)  # kernel and bias at 1e-3 each
    assert callback.clipping_in_effect == "per_variable (each replica's share (Keras' default under a strategy))"
    assert distribute.AggregationHook.of(optimizer, create=False) is None
    assert "_clip_gradients" not in optimizer.__dict__ and "_all_reduce_sum_gradients" not in optimizer.__dict__


def test_norm_max_is_the_largest_step_norm_since_the_previous_read(tmp_path):
    """``grad_global/norm_max`` at a read is the largest global norm of the steps since the
    previous read (learning rate 0: each step's gradient is a tape pass on its own batch)."""
    model = mlp()
    model.compile(keras.optimizers.SGD(0.0), LOSS)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 6)).astype("float32") * np.repeat([1.0, 4.0, 0.5, 2.0] * 2, 8)[:, None].astype("float32")
    y = np.arange(64) % 3
    loss_fn = keras.losses.get(LOSS)

    @tf.function
    def norm(xb, yb):
        with tf.GradientTape() as tape:
            value = keras.ops.mean(loss_fn(yb, model(xb, training=True)))
        return tf.linalg.global_norm(tape.gradient(value, model.trainable_variables))

    step_norms = [float(norm(x[i:i + 8], y[i:i + 8])) for i in range(0, 64, 8)]
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=4, figures=False)])
    logged = scalar_series(tmp_path / "train", "grad_global/norm_max")
    assert sorted(logged) == [4, 8]
    assert logged[4] == pytest.approx(max(step_norms[:4]), rel=1e-5)
    assert logged[8] == pytest.approx(max(step_norms[4:]), rel=1e-5)


def test_the_tap_counts_stay_exact_when_a_read_moves_them_to_the_host(tmp_path, monkeypatch):
    """The counts ride in the tap's float32 array; from COUNT_REBASE on a read moves them into
    host integers (here from 2, so every other read does)."""
    from keras_bn.callbacks import _gradient_tap

    monkeypatch.setattr(_gradient_tap, "COUNT_REBASE", 2)
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05, global_clipnorm=1e-6), LOSS)  # every step clips
    x, y = data(32)
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[kbc.GradientNorms(str(tmp_path), every=1, figures=False)])
    tap = StepTaps.of(model).gradient_tap(model.optimizer)
    first, again = tap.read(), tap.read()
    assert first["fired_steps"] == again["fired_steps"] == 12 == int(model.optimizer.iterations.numpy())
    assert first["clipped_steps"] == again["clipped_steps"] == 12 and first["nonfinite_steps"] == 0
    assert np.asarray(tap.stats.numpy())[-3:].max() < 2  # the device's share was moved to the host
    fraction = scalar_series(tmp_path / "train", "grad_global/clip_fraction")
    assert sorted(fraction) == list(range(1, 13)) and set(fraction.values()) == {1.0}


def test_a_tap_for_other_backends_only_is_left_out_with_one_warning():
    class ElsewhereOnly:
        backends = ("jax",)  # not this TensorFlow process

        def patch(self):
            raise AssertionError("a left-out tap is never patched")

        unpatch = patch

    model = mlp()
    owner = StepTaps.of(model)
    with pytest.warns(RuntimeWarning, match=r"ElsewhereOnly does not run on the tensorflow backend"):
        owner.register(ElsewhereOnly())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        owner.register(ElsewhereOnly())  # once per tap kind
    assert owner.taps == []
    x, y = data(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # its patch would raise
