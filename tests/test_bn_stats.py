"""Tests for keras_bn.bn_stats: check_batchnorm on every model style, against NumPy statistics."""

import warnings

import keras
import numpy as np
import pytest

import keras_bn
from keras_bn.bn_stats import BatchNormReport, check_batchnorm


def _bn_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            yield layer
        elif isinstance(layer, keras.Model):
            yield from _bn_layers(layer)


def _weights(model):
    return [np.array(v) for v in model.variables]



def _data(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(n, 20)).astype("float32")  # far from mean 0, variance 1
    y = (x[:, :10].sum(axis=1) > x[:, 10:].sum(axis=1)).astype("int32")
    return x, y


def _mlp(momentum):
    keras.utils.set_random_seed(0)
    model = keras_bn.build_dense((20,), [16, 16], 2, norm_kwargs={"momentum": momentum})
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_check_flags_never_updated_and_leaves_model_untouched():
    model = _mlp(0.99)
    x, _ = _data()
    before = _weights(model)
    result = check_batchnorm(model, x[:256])
    assert not result.ok
    assert [row.status for row in result.rows] == ["never updated", "never updated"]
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model)))
    assert [bn.momentum for bn in _bn_layers(model)] == [0.99, 0.99]
    text = str(result)
    assert "never updated" in text and "training=True" in text and "block1_bn" in text


def test_check_passes_after_a_few_epochs_and_flags_short_slow_run():
    x, y = _data()
    trained = _mlp(0.9)
    trained.fit(x, y, batch_size=32, epochs=3, verbose=0)
    result = check_batchnorm(trained, x[:256])
    assert result.ok, str(result)
    assert "OK" in str(result)

    slow = _mlp(0.99)  # 16 steps: 0.99**16 = 85% of the initial statistics remain
    slow.fit(x, y, batch_size=32, epochs=1, verbose=0)
    result = check_batchnorm(slow, x[:256])
    assert not result.ok
    assert {row.status for row in result.flagged} == {"stale"}
    assert "momentum" in str(result)


def test_check_flags_frozen_layer():
    x, y = _data()
    model = _mlp(0.9)
    model.get_layer("block1_bn").trainable = False
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    result = check_batchnorm(model, x[:256])
    statuses = {row.name: row.status for row in result.rows}
    assert statuses == {"block1_bn": "frozen", "block2_bn": "ok"}
    assert model.get_layer("block1_bn").trainable is False
    assert result.output_gap >= 0.0


def test_check_on_model_without_bn():
    model = keras_bn.build_dense((4,), [3], 2, norm=None)
    result = check_batchnorm(model, np.ones((2, 4), "float32"))
    assert result.ok and not result.rows and "no BatchNormalization" in str(result)


def _expected_row(bn, inputs):
    """mean_shift and var_ratio of `bn` on its batch input, in NumPy (float64)."""
    inputs = np.asarray(inputs, np.float64).reshape(-1, np.asarray(bn.moving_mean).shape[0])
    b_mean, b_var = inputs.mean(axis=0), inputs.var(axis=0)
    m_mean, m_var = np.asarray(bn.moving_mean, np.float64), np.asarray(bn.moving_variance, np.float64)
    eps = float(bn.epsilon)
    shift = np.sqrt(np.mean(((m_mean - b_mean) / np.sqrt(b_var + eps)) ** 2))
    ratio = np.exp(np.mean(np.abs(np.log((m_var + eps) / (b_var + eps)))))
    return shift, ratio


class UserBlock(keras.layers.Layer):
    """A user layer holding its own BN (not a Model: no `.layers`)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.fc = keras.layers.Dense(units)
        self.bn = keras.layers.BatchNormalization(momentum=0.9, name="bn")

    def call(self, x, training=None):
        return keras.ops.relu(self.bn(self.fc(x), training=training))


class SubNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.block = UserBlock(12, name="block")
        self.fc = keras.layers.Dense(8)
        self.bn = keras.layers.BatchNormalization(momentum=0.99, name="bn")
        self.head = keras.layers.Dense(2)

    def call(self, x, training=None):
        h = self.block(x, training=training)
        return self.head(keras.ops.relu(self.bn(self.fc(h), training=training)))


def test_subclassed_model_rows_match_numpy_statistics():
    x, y = _data()
    model = SubNet()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    before = _weights(model)
    result = check_batchnorm(model, x[:256])
    assert isinstance(result, BatchNormReport)
    assert [row.name for row in result.rows] == ["block/bn", "bn"]
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model)))
    # each BN's input on this batch in training mode, computed layer by layer in NumPy
    block_in = np.asarray(keras.ops.convert_to_numpy(model.block.fc(x[:256])), np.float64)
    bn1 = model.block.bn
    normalized = (block_in - block_in.mean(0)) / np.sqrt(block_in.var(0) + bn1.epsilon)
    h = np.maximum(normalized * np.asarray(bn1.gamma) + np.asarray(bn1.beta), 0.0)
    second_in = h @ np.asarray(model.fc.kernel, np.float64) + np.asarray(model.fc.bias)
    for row, bn, inputs in zip(result.rows, (bn1, model.bn), (block_in, second_in)):
        shift, ratio = _expected_row(bn, inputs)
        assert row.mean_shift == pytest.approx(shift, rel=1e-4)
        assert row.var_ratio == pytest.approx(ratio, rel=1e-4)
        assert row.channels == np.asarray(bn.moving_mean).shape[0]
    # 13 steps at momentum 0.99 leave 88% of the initial statistics on the second BN
    assert {row.name: row.status for row in result.rows}["bn"] == "stale"


def test_unbuilt_subclassed_model_is_built_and_never_updated():
    result = check_batchnorm(SubNet(), _data()[0][:64])
    assert [row.status for row in result.rows] == ["never updated", "never updated"]


def test_keras_bn_blocks_inside_a_user_model_are_found():
    inputs = keras.Input((20,))
    h = keras_bn.DenseBlock(8, name="user_block")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    result = check_batchnorm(model, _data()[0][:64])
    assert len(result.rows) == 1 and result.rows[0].name.startswith("user_block/")


def test_old_names_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="BatchNormReport"):
        assert keras_bn.BatchNormCheck is BatchNormReport
    with pytest.warns(DeprecationWarning, match="keras_bn.bn_stats.check_batchnorm"):
        from keras_bn.folding import check_batchnorm as old
    assert old is check_batchnorm
    assert keras_bn.callbacks.BatchNormCheck is not BatchNormReport  # the callback keeps its name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert keras_bn.BatchNormReport is BatchNormReport


def test_bad_inputs():
    model = keras_bn.build_dense((4,), [3], 2)
    with pytest.raises(TypeError, match="model=3"):
        check_batchnorm(3, np.ones((2, 2)))
    with pytest.raises(ValueError, match="mean_tol=-1"):
        check_batchnorm(model, np.ones((2, 4)), mean_tol=-1)
    with pytest.raises(ValueError, match="var_tol=0.5"):
        check_batchnorm(model, np.ones((2, 4)), var_tol=0.5)
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        check_batchnorm(model, np.ones((1, 4)))
