import numpy as np
import pytest

import keras
from keras_bn.norms import make_norm, norm_suffix


def test_group_norm_default_groups_divide_the_channels():
    assert make_norm("group", channels=48).groups == 16
    assert make_norm("group", channels=100).groups == 4


def test_none_makes_no_layer_and_no_suffix():
    assert make_norm(None, channels=8) is None
    assert norm_suffix("none") == ""


def test_batch_norm_in_training_mode_normalizes_each_feature_over_the_batch():
    layer = make_norm("batch", channels=3, norm_kwargs={"epsilon": 1e-6})
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(256, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=0), 1, atol=1e-3)


def test_layer_norm_normalizes_each_sample_independently_of_the_batch():
    layer = make_norm("layer", channels=16)
    x = np.random.default_rng(0).normal(2.0, 4.0, size=(4, 16)).astype("float32")
    alone = keras.ops.convert_to_numpy(layer(x[:1]))
    together = keras.ops.convert_to_numpy(layer(x))[:1]
    np.testing.assert_allclose(alone, together, atol=1e-6)
    np.testing.assert_allclose(together.mean(axis=-1), 0, atol=1e-5)


@pytest.mark.parametrize("norm", ["bacth", "instance"])
def test_unknown_norm_lists_the_choices(norm):
    with pytest.raises(ValueError, match=r"Expected one of: 'none', 'batch', 'layer', 'group', 'sync_batch'"):
        make_norm(norm, channels=4)
