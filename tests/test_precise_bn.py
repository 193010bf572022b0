"""recompute_batchnorm_statistics: exact population statistics of each BN layer's inputs."""

import keras
import numpy as np
import pytest

import keras_bn
from keras_bn.callbacks._taps import StepTaps
from keras_bn.precise_bn import batchnorm_gaps


def bn_model(conv=False):
    if conv:
        inputs = keras.Input((6, 6, 3))
        h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
        h = keras.layers.BatchNormalization(name="bn1")(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
    else:
        inputs = keras.Input((8,))
        h = keras.layers.Dense(16, name="d1")(inputs)
        h = keras.layers.BatchNormalization(name="bn1")(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.Dense(8, name="d2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.Activation("tanh")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def trained(model, x, steps=3):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = np.arange(len(x)) % 3
    model.fit(x, y, batch_size=16, epochs=1, steps_per_epoch=steps, verbose=0)
    return model


def bn_inputs(model, x):
    """Inputs of bn1 and bn2 in inference mode, by an independent sub-model."""
    probe = keras.Model(model.inputs[0], [model.get_layer("bn1").input, model.get_layer("bn2").input])
    return [np.asarray(keras.ops.convert_to_numpy(a), np.float64) for a in probe(x, training=False)]


def snapshot(model):
    bn_stats = {id(v) for name in ("bn1", "bn2") for v in model.get_layer(name).non_trainable_variables}
    weights = {v.path: v.numpy().copy() for v in model.variables if id(v) not in bn_stats}
    optimizer = {v.path: v.numpy().copy() for v in model.optimizer.variables}
    return weights, optimizer


@keras.saving.register_keras_serializable(package="keras_bn_tests")
class UserBlock(keras.layers.Layer):
    """A user's layer holding a BN (named bn2) that no model-level walk sees."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(8, name="d2")
        self.bn = keras.layers.BatchNormalization(name="bn2")

    def call(self, inputs, training=None):
        return keras.ops.tanh(self.bn(self.dense(inputs), training=training))


def bn_inside_a_user_layer():
    inputs = keras.Input((8,))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(keras.layers.Dense(16, name="d1")(inputs)))
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(UserBlock(name="user_block")(h)))


def test_a_bn_inside_a_users_layer_is_recomputed_too():
    x = np.random.default_rng(2).normal(2.0, 3.0, size=(64, 8)).astype("float32")
    model = trained(bn_inside_a_user_layer(), x)
    used = keras_bn.recompute_batchnorm_statistics(model, x, batch_size=32)
    assert used == {"bn1": 64, "user_block/bn2": 64}
    block = model.get_layer("user_block")
    h = keras.Model(model.inputs[0], model.get_layer("user_block").input)(x, training=False)
    h = np.asarray(keras.ops.convert_to_numpy(h), np.float64)
    z = h @ block.dense.kernel.numpy().astype(np.float64) + block.dense.bias.numpy()  # bn2's input, by hand
    np.testing.assert_allclose(block.bn.moving_mean.numpy(), z.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block.bn.moving_variance.numpy(), z.var(axis=0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["numpy", "dataset", "generator", "conv"])
def test_moving_statistics_equal_numpy_statistics_of_the_inputs(kind):
    rng = np.random.default_rng(0)
    conv = kind == "conv"
    x = rng.normal(2.0, 3.0, size=(100, 6, 6, 3) if conv else (100, 8)).astype("float32")
    model = trained(bn_model(conv), x)
    weights, optimizer = snapshot(model)
    if kind == "dataset":
        tf = pytest.importorskip("tensorflow", reason="the tf.data form needs TensorFlow installed")
        data = tf.data.Dataset.from_tensor_slices((x, np.zeros(100))).batch(30)
    else:
        data = {"numpy": (x, np.zeros(100)), "conv": x, "generator": (x[i:i + 25] for i in range(0, 100, 25))}[kind]
    used = keras_bn.recompute_batchnorm_statistics(model, data, batch_size=32)
    inputs = bn_inputs(model, x)
    for name, values in zip(("bn1", "bn2"), inputs):
        axes = tuple(range(values.ndim - 1))
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean.numpy(), values.mean(axis=axes), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), values.var(axis=axes), rtol=1e-5, atol=1e-5)
        assert used[name] == values.size // values.shape[-1]
    after_weights, after_optimizer = snapshot(model)
    for path, value in weights.items():
        np.testing.assert_array_equal(after_weights[path], value)
    for path, value in optimizer.items():
        np.testing.assert_array_equal(after_optimizer[path], value)
    assert max(batchnorm_gaps(model, x).values()) < 1e-4  # the train/inference gap is gone


def test_steps_limits_the_batches_and_bad_data_is_refused():
    x = np.random.default_rng(1).normal(size=(64, 8)).astype("float32")
    model = trained(bn_model(), x)
    used = keras_bn.recompute_batchnorm_statistics(model, x, steps=2, batch_size=16)
    assert used == {"bn1": 32, "bn2": 32}
    np.testing.assert_allclose(model.get_layer("bn1").moving_mean.numpy(), bn_inputs(model, x[:32])[0].mean(0),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="Received: data=int"):
        keras_bn.recompute_batchnorm_statistics(model, 3)
    with pytest.raises(ValueError, match="steps"):
        keras_bn.recompute_batchnorm_statistics(model, x, steps=0)


def test_an_infinite_dataset_is_refused():
    tf = pytest.importorskip("tensorflow", reason="the tf.data form needs TensorFlow installed")
    x = np.random.default_rng(1).normal(size=(64, 8)).astype("float32")
    model = trained(bn_model(), x)
    with pytest.raises(ValueError, match="infinite tf.data.Dataset"):
        keras_bn.recompute_batchnorm_statistics(model, tf.data.Dataset.from_tensor_slices(x).batch(8).repeat())


def test_gap_measures_stale_statistics():
    x = np.random.default_rng(2).normal(3.0, 2.0, size=(256, 8)).astype("float32")
    model = trained(bn_model(), x, steps=2)  # momentum 0.99: the moving statistics are still ~ (0, 1)
    gaps = batchnorm_gaps(model, x)
    assert set(gaps) == {"bn1", "bn2"} and gaps["bn1"] > 1.0
    bn1 = model.get_layer("bn1")
    inputs = bn_inputs(model, x)[0]
    std_b = np.sqrt(inputs.var(0) + bn1.epsilon)
    std_m = np.sqrt(bn1.moving_variance.numpy() + bn1.epsilon)
    z_train = (inputs - inputs.mean(0)) / std_b
    z_inf = (inputs - bn1.moving_mean.numpy()) / std_m
    expected = np.sqrt(np.mean(np.square(z_inf - z_train)))  # RMS over samples and channels
    assert gaps["bn1"] == pytest.approx(expected, rel=1e-3)


@pytest.mark.backends("tensorflow", reason="keep_traced keeps a tf.function; elsewhere the pass is eager")
def test_traced_gap_equals_the_eager_one_and_is_traced_once_per_model():
    x = np.random.default_rng(3).normal(1.0, 2.0, size=(96, 8)).astype("float32")
    model = trained(bn_model(), x, steps=2)
    eager = batchnorm_gaps(model, x)
    traced = batchnorm_gaps(model, x, keep_traced=True)
    assert set(traced) == set(eager) == {"bn1", "bn2"}
    for name in eager:
        assert traced[name] == pytest.approx(eager[name], rel=1e-5)
    read = StepTaps.of(model).cached("batchnorm_gaps", [model.get_layer("bn1"), model.get_layer("bn2")], None)
    model.get_layer("bn1").moving_mean.assign(np.full(16, 5.0, "float32"))  # the trace reads the variables anew
    assert batchnorm_gaps(model, x, keep_traced=True)["bn1"] == pytest.approx(batchnorm_gaps(model, x)["bn1"], rel=1e-5)
    assert batchnorm_gaps(model, x, keep_traced=True)["bn1"] > traced["bn1"]
    assert read.experimental_get_tracing_count() == 1
