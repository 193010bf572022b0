import numpy as np
import pytest

import keras
import keras_bn
from keras_bn.activations import activation_family, default_initializer, make_activation


def test_maxout_equals_the_max_of_its_pieces():
    x = np.random.default_rng(0).normal(size=(5, 12)).astype("float32")
    out = keras.ops.convert_to_numpy(keras_bn.Maxout(num_pieces=3)(x))
    expected = x.reshape(5, 4, 3).max(axis=-1)
    np.testing.assert_array_equal(out, expected)


def test_maxout_on_channels_first_feature_maps():
    x = np.random.default_rng(1).normal(size=(2, 6, 4, 4)).astype("float32")
    out = keras.ops.convert_to_numpy(keras_bn.Maxout(num_pieces=2, axis=1)(x))
    np.testing.assert_array_equal(out, x.reshape(2, 3, 2, 4, 4).max(axis=2))


def test_maxout_rejects_a_width_that_does_not_split():
    with pytest.raises(ValueError, match="7 features do not split into groups of 2"):
        keras_bn.Maxout(2)(np.zeros((1, 7), "float32"))


def test_maxout_config_round_trip():
    layer = keras_bn.Maxout(num_pieces=4, axis=1, name="mx")
    clone = keras_bn.Maxout.from_config(layer.get_config())
    assert (clone.num_pieces, clone.axis, clone.name) == (4, 1, "mx")


def test_leaky_relu_uses_the_notes_slope_of_001():
    layer = make_activation("leaky_relu")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(np.array([[-100.0]], "float32"))), [[-1.0]])


def test_prelu_slope_is_learned():
    layer = make_activation("prelu")
    layer.build((None, 3))
    assert len(layer.trainable_weights) == 1


@pytest.mark.parametrize(
    "layer, family",
    [
        (keras.layers.ReLU(), "relu"),
        (keras.layers.Activation("relu"), "relu"),
        (keras.layers.Dense(3, activation="tanh"), "tanh"),
        (keras.layers.Activation("sigmoid"), "sigmoid"),
        (keras_bn.Maxout(), "relu"),
        (keras.layers.Activation("gelu"), "smooth"),
        (keras.layers.BatchNormalization(), None),
    ],
)
def test_activation_family_of_any_keras_layer(layer, family):
    assert activation_family(layer) == family


def test_unknown_keras_activation_defaults_to_glorot():
    assert default_initializer("swish") == "glorot_uniform"
    assert default_initializer(keras.activations.relu) == "glorot_uniform"
