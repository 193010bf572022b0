import numpy as np
import pytest

import keras
from keras_bn.initializers import get_bias_initializer, get_initializer

FAN = 500  # a 500x500 kernel: the variance estimate is good to well under 1%


def empirical_variance(initializer):
    return float(np.var(keras.ops.convert_to_numpy(initializer((FAN, FAN)))))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("he_normal", 2 / FAN),
        ("he_uniform", 2 / FAN),
        ("glorot_normal", 2 / (FAN + FAN)),
        ("glorot_uniform", 2 / (FAN + FAN)),
        ("lecun_normal", 1 / FAN),
        ("xavier_normal", 2 / (FAN + FAN)),
        ("kaiming_uniform", 2 / FAN),
    ],
)
def test_variance_matches_the_formula_within_5_percent(name, expected):
    assert empirical_variance(get_initializer(name)) == pytest.approx(expected, rel=0.05)


def test_number_means_plain_normal_with_that_std():
    init = get_initializer(0.05)
    assert isinstance(init, keras.initializers.RandomNormal)
    assert np.sqrt(empirical_variance(init)) == pytest.approx(0.05, rel=0.02)


def test_auto_follows_activation():
    assert isinstance(get_initializer("auto", activation="relu"), keras.initializers.HeNormal)
    assert isinstance(get_initializer("auto", activation="tanh"), keras.initializers.GlorotUniform)
    assert isinstance(get_initializer("auto", activation="selu"), keras.initializers.LecunNormal)


def test_zeros_and_keras_objects_pass_through():
    assert not np.any(keras.ops.convert_to_numpy(get_initializer("zeros")((3, 3))))
    orthogonal = keras.initializers.Orthogonal()
    assert get_initializer(orthogonal) is orthogonal
    assert isinstance(get_initializer("orthogonal"), keras.initializers.Orthogonal)


def test_bias_constant():
    np.testing.assert_allclose(keras.ops.convert_to_numpy(get_bias_initializer(0.01)((4,))), 0.01)


@pytest.mark.parametrize(
    "value, error, message",
    [("he_nromal", ValueError, "Did you mean 'he_normal'"), (float("nan"), ValueError, "must be finite"),
     (True, TypeError, "initializer=True"), ([1], TypeError, r"initializer=\[1\]")],
)
def test_bad_initializer(value, error, message):
    with pytest.raises(error, match=message):
        get_initializer(value)
