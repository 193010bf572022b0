import dataclasses

import numpy as np
import pytest

import keras
import keras_bn
from keras_bn.block_options import BlockOptions
from keras_bn.builders import MAX_PARAMETERS
from tests._layer_spy import count_layers


def test_options_are_resolved_once_and_frozen():
    options = BlockOptions(activation="Leaky-ReLU", norm="BN", dropout=0, act_kwargs={"negative_slope": 0.2})
    assert options.norm == "batch" and options.norm_spec.suffix == "bn"
    assert options.dropout == 0.0 and isinstance(options.dropout, float)
    assert options.use_linear_bias is False  # BN directly follows
    assert options.replace(norm_position="after").use_linear_bias is True
    assert options.replace(norm="layer").use_linear_bias is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.norm = "layer"
    with pytest.raises(TypeError):
        options.act_kwargs["negative_slope"] = 0.5  # read-only mapping
    with pytest.raises(ValueError, match="Did you mean 'batch'"):
        options.replace(norm="bacth")  # replace checks again


def test_config_round_trip_keeps_objects():
    options = BlockOptions(activation=keras.activations.swish, initializer=keras.initializers.Orthogonal(),
                           norm="group", norm_kwargs={"groups": 2})
    again = BlockOptions.from_config(options.config())
    assert isinstance(again.initializer, keras.initializers.Orthogonal)
    assert again.activation is keras.activations.swish
    assert again.norm_kwargs == {"groups": 2}


def test_blocks_take_an_options_value_or_keywords_not_both():
    options = BlockOptions(activation="tanh", norm="layer")
    block = keras_bn.DenseBlock(4, options=options, name="blk")
    assert block.options is options
    assert [layer.name for layer in block.sublayers] == ["blk_dense", "blk_ln", "blk_tanh"]
    assert block.get_config()["norm"] == "layer"
    with pytest.raises(ValueError, match="either as `options` or as keyword arguments"):
        keras_bn.DenseBlock(4, options=options, norm="batch")


def test_builder_blocks_share_one_options_value(monkeypatch):
    seen = []
    original = BlockOptions.__post_init__

    def spy(self):
        seen.append(self)
        original(self)

    monkeypatch.setattr(BlockOptions, "__post_init__", spy)
    keras_bn.build_dense((4,), [3, 3, 3], 2)
    assert len(seen) == 1  # validated once for the whole net, not per block


# #16 item 4: values that passed unchecked or failed late inside Keras.

def test_numpy_integer_num_classes_is_an_int():
    model = keras_bn.build_dense((4,), [3], np.int64(3))
    assert model.get_layer("logits").units == 3 and type(model.get_layer("logits").units) is int
    conv = keras_bn.build_conv((8, 8, 1), [2], np.int32(4))
    assert conv.output.shape == (None, 4)
    resnet = keras_bn.build_resnet((8, 8, 1), None, np.int64(5), blocks_per_stage=1, widths=(2,))
    assert resnet.output.shape == (None, 5)


HOSTILE = [
    (dict(activation="leaky_relu", act_kwargs={"negative_slope": float("nan")}), ValueError,
     r"`negative_slope` must be in \[0, inf\).*nan"),
    (dict(activation="leaky_relu", act_kwargs={"negative_slope": float("inf")}), ValueError,
     r"`negative_slope` must be in .*, a finite number.*inf"),
    (dict(norm_kwargs={"center": "no"}), TypeError, r"`norm_kwargs` option 'center' must be True or False.*'no'"),
    (dict(norm="layer", norm_kwargs={"scale": 1}), TypeError, r"option 'scale' must be True or False"),
    (dict(units={32, 64}), TypeError, r"`units` must be a list .*a set or dict has no order"),
    (dict(units={32: 1}), TypeError, r"`units` must be a list .*a set or dict has no order"),
    (dict(units=[200_000, 200_000]), ValueError, r"`units` makes a net of about 40,\d+,\d+,\d+ parameters.*limit of 1,000,000,000"),
]


@pytest.mark.parametrize("override, error, message", HOSTILE)
def test_hostile_dense_values_fail_early_naming_the_argument(override, error, message, monkeypatch):
    kwargs = {**dict(input_shape=(6,), units=[4], num_classes=3), **override}
    with count_layers(monkeypatch) as created, pytest.raises(error, match=message):
        keras_bn.build_dense(**kwargs)
    assert created == []


def test_parameter_limit_for_conv_and_resnet_and_just_below_it(monkeypatch):
    with count_layers(monkeypatch) as created:
        with pytest.raises(ValueError, match=r"`filters` makes a net of about"):
            keras_bn.build_conv((8, 8, 1), [4096, 32768], 3)
        with pytest.raises(ValueError, match=r"`widths` makes a net of about"):
            keras_bn.build_resnet((8, 8, 1), 20, 3, widths=(4096, 8192, 8192))
    assert created == []
    # The estimate counts what the net holds: a dense net at the limit is refused, one below it is not.
    monkeypatch.setattr("keras_bn.builders.MAX_PARAMETERS", 6 * 10 + 10 * 3)
    keras_bn.build_dense((6,), [10], 3, norm=None)
    with pytest.raises(ValueError, match="limit of 90"):
        keras_bn.build_dense((6,), [11], 3, norm=None)
    assert MAX_PARAMETERS == 10**9


def test_conv_block_rank_must_be_an_integer_not_a_bool():
    with pytest.raises(TypeError, match=r"`rank` must be 1, 2 or 3.*rank=True"):
        keras_bn.ConvBlock(4, rank=True)


def test_maxout_axis_must_be_an_integer():
    with pytest.raises(TypeError, match=r"`axis` must be an integer.*axis='x'"):
        keras_bn.Maxout(axis="x")
