import numpy as np
import pytest

import keras
import keras_bn


def test_dense_block_matches_the_builder_layers():
    block = keras_bn.DenseBlock(6, activation="tanh", norm="batch", name="blk")
    y = block(np.ones((3, 4), "float32"))
    assert y.shape == (3, 6)
    assert [layer.name for layer in block.sublayers] == ["blk_dense", "blk_bn", "blk_tanh"]
    assert not block.sublayers[0].use_bias


def test_blocks_respect_the_training_flag():
    block = keras_bn.DenseBlock(4, norm="batch", activation="linear")
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 5)).astype("float32")
    train = keras.ops.convert_to_numpy(block(x, training=True))
    infer = keras.ops.convert_to_numpy(block(x, training=False))
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-4)  # batch statistics
    assert np.abs(infer.mean(axis=0)).max() > 0.1  # moving statistics, barely updated


@pytest.mark.parametrize("rank, shape", [(1, (2, 10, 3)), (2, (2, 8, 8, 3)), (3, (2, 4, 4, 4, 3))])
def test_conv_block_ranks(rank, shape):
    block = keras_bn.ConvBlock(5, kernel_size=3, rank=rank, norm="group", activation="maxout")
    y = block(np.ones(shape, "float32"))
    assert y.shape == shape[:-1] + (5,)


def test_blocks_save_and_load_inside_a_user_model(tmp_path):
    inputs = keras.Input((8, 8, 2))
    x = keras_bn.ConvBlock(4, activation="prelu", norm="layer", initializer=0.05)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras_bn.DenseBlock(3, activation="selu", norm=None, dropout=0.1, bias_initializer=0.01)(x)
    model = keras.Model(inputs, x)
    sample = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(model.predict(sample, verbose=0), loaded.predict(sample, verbose=0))
    assert isinstance(loaded.layers[1], keras_bn.ConvBlock)


def test_block_bad_option_message():
    with pytest.raises(ValueError, match="Did you mean 'batch'"):
        keras_bn.DenseBlock(4, norm="bacth")
    with pytest.raises(ValueError, match=r"`padding` must be one of: 'same', 'valid'"):
        keras_bn.ConvBlock(4, padding="full")
