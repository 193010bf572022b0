"""The zoo of user models: keras-bn's diagnostics on the models, losses and fit settings Keras
users actually write, each checked against an independent computation (docs/ZOO.md has the
matrix). Gradient norms of step 1 equal a GradientTape pass on a copy of the same weights, to
1e-5 relative."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402
from tests._events import scalar_series, tag_step_counts  # noqa: E402

N, BATCH = 16, 8


@keras.saving.register_keras_serializable(package="keras_bn_tests")
class UserBlockLayer(keras.layers.Layer):
    """A user's own layer holding a keras-bn block."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.block = keras_bn.DenseBlock(units, norm="batch", activation="relu")

    def build(self, input_shape):
        self.block.build(input_shape)

    def call(self, inputs, training=None):
        return self.block(inputs, training=training)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(3, activation="softmax")

    def call(self, inputs):
        return self.out(self.hidden(inputs))


def _dense_in(shape=(6,)):
    return keras.Input(shape, name="x")


def seq_unbuilt():
    return keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")])


def seq_built():
    return keras.Sequential([_dense_in(), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3, activation="softmax")])


def functional_two_inputs():
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(5, activation="relu")(a), b])
    return keras.Model([a, b], keras.layers.Dense(3, activation="softmax")(h))


def nested_functional():
    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, keras.layers.Dense(8, activation="relu", name="inner_dense")(inner_in), name="inner")
    x = _dense_in()
    return keras.Model(x, keras.layers.Dense(3, activation="softmax")(inner(keras.layers.Dense(8)(x))))


def recurrent_stack():
    x = keras.Input((5, 3))
    h = keras.layers.LSTM(6, return_sequences=True)(x)
    return keras.Model(x, keras.layers.Dense(3, activation="softmax")(keras.layers.GRU(4)(h)))


def applications_model():
    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3)


def logits_head():
    return keras_bn.build_dense((6,), [8], 3, output_activation=None)


def regression_head():
    x = _dense_in()
    return keras.Model(x, keras.layers.Dense(1)(keras.layers.Dense(8, activation="relu")(x)))


def blocks_in_user_layers():
    x = _dense_in()
    return keras.Model(x, keras.layers.Dense(3, activation="softmax")(UserBlockLayer(8)(x)))


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(N, *shape)).astype("float32")


CLASSES = np.arange(N) % 3
ZOO = {  # name: (factory, inputs, targets, loss)
    "sequential_unbuilt": (seq_unbuilt, _x((6,)), CLASSES, "sparse_categorical_crossentropy"),
    "sequential_built": (seq_built, _x((6,)), CLASSES, "sparse_categorical_crossentropy"),
    "functional_two_inputs": (functional_two_inputs, {"a": _x((6,)), "b": _x((4,), 1)}, CLASSES,
                              "sparse_categorical_crossentropy"),
    "nested_functional": (nested_functional, _x((6,)), CLASSES, "sparse_categorical_crossentropy"),
    "subclassed": (Subclassed, _x((6,)), CLASSES, "sparse_categorical_crossentropy"),
    "lstm_gru_stack": (recurrent_stack, _x((5, 3)), CLASSES, "sparse_categorical_crossentropy"),
    "keras_applications": (applications_model, _x((32, 32, 3)), CLASSES, "sparse_categorical_crossentropy"),
    "logits_head": (logits_head, _x((6,)), CLASSES, keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    "regression_head": (regression_head, _x((6,)), np.linspace(-1, 1, N).astype("float32")[:, None], "mse"),
    "keras_bn_blocks_in_user_layers": (blocks_in_user_layers, _x((6,)), CLASSES, "sparse_categorical_crossentropy"),
}


def _first_batch(inputs, targets):
    if isinstance(inputs, dict):
        return {k: v[:BATCH] for k, v in inputs.items()}, targets[:BATCH]
    return inputs[:BATCH], targets[:BATCH]


def _compiled(name, **compile_kwargs):
    factory, inputs, targets, loss = ZOO[name]
    keras.utils.set_random_seed(11)
    model = factory()
    model.compile(keras.optimizers.SGD(0.01), loss, **compile_kwargs)
    if not model.built:
        model(_first_batch(inputs, targets)[0])
    return model, inputs, targets, loss


def tape_global_norm(model, loss, x, y) -> float:
    """The step-1 gradient norm, computed independently on a copy with the same weights."""
    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss

    @tf.function  # a graph, as fit's step is: the same kernels, so float32 sums in the same order
    def gradients(x, y):
        with tf.GradientTape() as tape:
            value = keras.ops.mean(loss_fn(y, model(x, training=True)))  # Keras: mean over the batch
        return tape.gradient(value, model.trainable_variables)

    grads = gradients(x, y)
    return float(np.sqrt(sum(np.sum(np.square(g.numpy().astype(np.float64))) for g in grads if g is not None)))


def _reference_norm(name, model, inputs, targets, loss):
    factory = ZOO[name][0]
    keras.utils.set_random_seed(11)
    twin = factory()
    x, y = _first_batch(inputs, targets)
    if not twin.built:
        twin(x)
    twin.set_weights(model.get_weights())
    return tape_global_norm(twin, loss, x, y)


@pytest.mark.parametrize("name", list(ZOO))
def test_preset_gradient_norms_equal_the_tape_on_every_model_style(tmp_path, name):
    model, inputs, targets, loss = _compiled(name)
    expected = _reference_norm(name, model, inputs, targets, loss)
    callbacks = kbc.diagnostics(str(tmp_path), every=1, figures=False)
    model.fit(inputs, targets, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    logged = scalar_series(tmp_path / "train", "grad_global/norm")
    assert sorted(logged) == [1, 2]
    assert logged[1] == pytest.approx(expected, rel=1e-5)
    layer_tags = [t for t, s in tag_step_counts(tmp_path / "train") if t.startswith("grad_norm/") and s == 1]
    per_layer = [scalar_series(tmp_path / "train", t)[1] for t in sorted(set(layer_tags))]
    assert np.sqrt(np.sum(np.square(per_layer))) == pytest.approx(expected, rel=1e-5)  # the layers cover every variable


@pytest.mark.parametrize("setting", ["jit_compile", "steps_per_execution"])
def test_gradient_norms_under_the_fit_settings_users_combine(tmp_path, setting):
    """XLA: step 1's norm equals the tape's. steps_per_execution=2: the host reads once per
    execution, at steps 2 and 4, and the value is that of step 2 itself (learning rate 0 keeps
    the weights, so step 2's gradient is the tape's on the second batch)."""
    name = "keras_bn_blocks_in_user_layers"
    factory, inputs, targets, loss = ZOO[name]
    keras.utils.set_random_seed(11)
    model = factory()
    if setting == "jit_compile":
        model.compile(keras.optimizers.SGD(0.01), loss, jit_compile=True)
        batch, step = BATCH, 1
    else:
        model.compile(keras.optimizers.SGD(0.0), loss, steps_per_execution=2)
        batch, step = BATCH // 2, 2
    x, y = inputs[(step - 1) * batch:step * batch], targets[(step - 1) * batch:step * batch]
    keras.utils.set_random_seed(11)
    twin = factory()
    twin.set_weights(model.get_weights())
    expected = tape_global_norm(twin, loss, x, y)
    model.fit(inputs, targets, batch_size=batch, epochs=1, shuffle=False, verbose=0,
              callbacks=kbc.diagnostics(str(tmp_path), every=1, figures=False))
    logged = scalar_series(tmp_path / "train", "grad_global/norm")
    assert sorted(logged) == ([1, 2] if setting == "jit_compile" else [2, 4])
    assert logged[step] == pytest.approx(expected, rel=1e-5)


def test_backup_and_restore_and_a_keras_file_after_a_diagnosed_fit(tmp_path):
    model, inputs, targets, loss = _compiled("keras_bn_blocks_in_user_layers")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model.fit(inputs, targets, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=kbc.diagnostics(str(tmp_path / "run"), every=1, figures=False) + [backup])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0), rtol=1e-6, atol=1e-6)
    assert "apply" not in vars(loaded.optimizer) and "apply" not in vars(model.optimizer)
    assert sorted(scalar_series(tmp_path / "run" / "train", "grad_global/norm")) == [1, 2, 3, 4]


ACTIVATION_STYLES = ["lstm_gru_stack", "keras_applications", "logits_head", "regression_head", "functional_two_inputs"]


@pytest.mark.parametrize("name", ACTIVATION_STYLES)
def test_activation_statistics_equal_numpy_on_the_layer_outputs_of_every_model_style(tmp_path, name):
    """Each watched layer's mean and std equal NumPy's over that layer's output, computed by a
    separate Keras sub-model (no probe code) on the same probe, learning rate 0 (weights fixed)."""
    factory, inputs, targets, loss = ZOO[name]
    keras.utils.set_random_seed(11)
    model = factory()
    model.compile(keras.optimizers.SGD(0.0), loss)
    callback = kbc.ActivationStats(str(tmp_path), inputs, every=1, figures=False)
    model.fit(inputs, targets, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    means = {t.split("/", 1)[1] for t, _ in tag_step_counts(tmp_path / "train") if t.startswith("activation_mean/")}
    assert means, f"{name}: no layer watched"
    paths = sorted(means)
    layers = [model.get_layer(path) for path in paths]  # flat models: the path is the layer's name
    outputs = keras.Model(model.inputs, [layer.output for layer in layers]).predict(inputs, batch_size=N, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    for path, out in zip(paths, outputs):
        out = np.asarray(out, dtype=np.float64)
        mean = scalar_series(tmp_path / "train", f"activation_mean/{path}")
        std = scalar_series(tmp_path / "train", f"activation_std/{path}")
        assert mean[max(mean)] == pytest.approx(out.mean(), rel=1e-4, abs=1e-6), path
        assert std[max(std)] == pytest.approx(out.std(), rel=1e-4, abs=1e-6), path


DOCTOR_STYLES = ["sequential_unbuilt", "functional_two_inputs", "nested_functional", "lstm_gru_stack",
                 "keras_applications", "logits_head", "keras_bn_blocks_in_user_layers"]


def _tape_loss(model, loss, x, y) -> float:
    """The loss of step 1 on the first batch, computed directly (training mode, Keras' batch mean)."""
    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    return float(keras.ops.convert_to_numpy(keras.ops.mean(loss_fn(y, model(x, training=True)))))


@pytest.mark.parametrize("scale", [0.01, 100.0], ids=["head_x0.01", "head_x100"])
@pytest.mark.parametrize("name", DOCTOR_STYLES)
def test_the_doctor_reads_the_initial_loss_of_every_model_style(tmp_path, name, scale):
    """The doctor's ``doctor/initial_loss`` is the loss of step 1 (= a direct computation on the
    first batch), and its initial-loss rule fires exactly when that loss is more than 50% off
    ln(3): on the twin whose head kernel is scaled x100 (SEEDS §7), not on the one scaled x0.01
    (near-uniform softmax: ln 3)."""
    import math

    from keras_bn import doctor

    model, inputs, targets, loss = _compiled(name)
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]  # the output head
    head.kernel.assign(head.kernel * scale)
    expected = _tape_loss(model, loss, *_first_batch(inputs, targets))
    model.fit(inputs, targets, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=kbc.diagnostics(str(tmp_path), every=1, figures=False))
    series = doctor.read_series(tmp_path)
    (step, logged), = series["doctor/initial_loss"]
    # 1e-4: fit's graph step and this eager pass sum in different orders (oneDNN or Eigen kernels),
    # and the x100 head's loss of ~45 carries that float32 roundoff
    assert step == 1 and logged == pytest.approx(expected, rel=1e-4)
    fired = [f for f in doctor.diagnose(tmp_path) if f.rule == "initial_loss"]
    assert bool(fired) == (abs(expected - math.log(3)) > 0.5 * math.log(3))
    assert bool(fired) == (scale > 1)  # x100 is the fault, x0.01 its healthy twin


def two_inputs_bn():
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(5, name="dense_a")(a)))
    return keras.Model([a, b], keras.layers.Dense(3, activation="softmax")(keras.layers.Concatenate()([h, b])))


def lstm_bn():
    x = keras.Input((5, 3))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.LSTM(6, return_sequences=True)(x))
    return keras.Model(x, keras.layers.Dense(3, activation="softmax")(keras.layers.GRU(4)(h)))


def logits_bn():
    return keras_bn.build_dense((6,), [8], 3, norm="batch", output_activation=None)


def regression_bn():
    x = _dense_in()
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8, name="hidden_dense")(x)))
    return keras.Model(x, keras.layers.Dense(1)(h))


BN_ZOO = {  # name: (factory, the zoo entry whose inputs, targets and loss it uses, BN layers folded)
    "functional_two_inputs": (two_inputs_bn, "functional_two_inputs", 1),
    "lstm_gru_stack": (lstm_bn, "lstm_gru_stack", 0),  # a BN after an LSTM has no kernel to fold into
    "logits_head": (logits_bn, "logits_head", 1),
    "regression_head": (regression_bn, "regression_head", 1),
}


@pytest.mark.parametrize("name", list(BN_ZOO))
def test_check_batchnorm_and_fold_batchnorm_on_bn_variants_of_the_model_styles(name):
    """check_batchnorm's mean_shift and var_ratio equal NumPy's on each BN layer's input (a
    sub-model's output); the folded copy predicts what the model predicts in inference mode."""
    factory, entry, folded_count = BN_ZOO[name]
    _, inputs, targets, loss = ZOO[entry]
    keras.utils.set_random_seed(11)
    model = factory()
    model.compile(keras.optimizers.SGD(0.01), loss)
    model.fit(inputs, targets, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)  # moving statistics move
    report = keras_bn.check_batchnorm(model, inputs)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert [row.name for row in report.rows] == [bn.name for bn in bns]
    bn_inputs = keras.Model(model.inputs, [bn.input for bn in bns]).predict(inputs, batch_size=N, verbose=0)
    for row, bn, z in zip(report.rows, bns, bn_inputs if len(bns) > 1 else [bn_inputs]):
        z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
        mean, var, eps = z.mean(axis=0), z.var(axis=0), float(bn.epsilon)
        moving_mean, moving_var = (np.asarray(v, np.float64) for v in (bn.moving_mean, bn.moving_variance))
        assert row.mean_shift == pytest.approx(np.sqrt(np.mean(((moving_mean - mean) / np.sqrt(var + eps)) ** 2)), rel=1e-4)
        assert row.var_ratio == pytest.approx(np.exp(np.mean(np.abs(np.log((moving_var + eps) / (var + eps))))), rel=1e-4)
    folded, fold_report = keras_bn.fold_batchnorm(model, return_report=True)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers) == len(bns) - folded_count
    np.testing.assert_allclose(folded.predict(inputs, verbose=0), model.predict(inputs, verbose=0), rtol=1e-5, atol=1e-5)
