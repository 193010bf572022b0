"""Configuration fuzzing of the builders (Hypothesis, fixed seed, bounded examples).

Every valid combination builds, trains one step, saves to .keras and loads back with
identical outputs; every invalid one raises ValueError or TypeError naming the argument
before any layer is made. KERAS_BN_FUZZ_EXAMPLES raises the example count for long runs.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import keras
import keras_bn
from keras_bn.activations import ACTIVATIONS
from tests._layer_spy import count_layers

EXAMPLES = int(os.environ.get("KERAS_BN_FUZZ_EXAMPLES", "8"))
# No shrinking: each example builds and saves a model, and a failure prints its arguments anyway.
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, phases=NO_SHRINK,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BAD = dict(deadline=None, database=None, phases=NO_SHRINK, suppress_health_check=[HealthCheck.function_scoped_fixture])

ACTIVATION_NAMES = ACTIVATIONS.names() + ["swish", "softplus"]
INITIALIZERS = ["auto", "he_normal", "he_uniform", "glorot_normal", "glorot_uniform",
                "lecun_normal", "lecun_uniform", "zeros", "xavier_uniform"]


@st.composite
def block_options(draw):
    activation = draw(st.sampled_from(ACTIVATION_NAMES))
    norm = draw(st.sampled_from([None, "batch", "layer", "group", "sync_batch", "BN", "layer-norm"]))
    act_kwargs = {}
    if activation == "leaky_relu" and draw(st.booleans()):
        act_kwargs["negative_slope"] = draw(st.floats(0.0, 0.5))
    if activation == "maxout" and draw(st.booleans()):
        act_kwargs["num_pieces"] = draw(st.integers(2, 3))
    norm_kwargs = {}
    canonical = {"BN": "batch", "layer-norm": "layer"}.get(norm, norm)
    if canonical in ("batch", "sync_batch") and draw(st.booleans()):
        norm_kwargs["momentum"] = draw(st.floats(0.0, 0.999))
    if canonical is not None and draw(st.booleans()):
        norm_kwargs["epsilon"] = draw(st.floats(1e-5, 1e-1))
    if canonical == "group" and draw(st.booleans()):
        norm_kwargs["groups"] = 1  # divides any width
    return dict(
        activation=activation,
        norm=norm,
        norm_position=draw(st.sampled_from(["before", "after"])),
        initializer=draw(st.one_of(st.sampled_from(INITIALIZERS), st.floats(0.001, 0.2))),
        bias_initializer=draw(st.one_of(st.just("zeros"), st.floats(-0.1, 0.1))),
        dropout=draw(st.sampled_from([0.0, 0.1, 0.5])),
        norm_kwargs=norm_kwargs or None,
        act_kwargs=act_kwargs or None,
        use_bias=draw(st.sampled_from([None, True, False])),
        output_activation=draw(st.sampled_from(["softmax", "sigmoid", None])),
    )


def train_save_load(model, x, tmp_path):
    model.compile(optimizer="adam", loss="mse")
    y = np.zeros((len(x),) + tuple(model.output.shape[1:]), "float32")
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    path = tmp_path / "fuzz.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


@seed(20261123)
@FUZZ
@given(options=block_options(), units=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       features=st.integers(1, 5), num_classes=st.integers(2, 4))
def test_every_valid_dense_configuration_trains_saves_and_loads(options, units, features, num_classes, tmp_path):
    model = keras_bn.build_dense((features,), units, num_classes, **options)
    x = np.random.default_rng(0).normal(size=(4, features)).astype("float32")
    train_save_load(model, x, tmp_path)


@seed(20261123)
@FUZZ
@given(options=block_options(), filters=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       size=st.integers(4, 9), kernel_size=st.integers(1, 3), pooling=st.sampled_from(["max", "avg", None]),
       head=st.sampled_from(["avg", "max", "flatten"]), dense_units=st.lists(st.integers(1, 4), max_size=1))
def test_every_valid_conv_configuration_trains_saves_and_loads(options, filters, size, kernel_size, pooling, head,
                                                               dense_units, tmp_path):
    # Big enough that every block's kernel fits the feature map it meets.
    size = max(size, kernel_size * 2 ** (len(filters) - 1) if pooling else kernel_size)
    model = keras_bn.build_conv((size, size, 2), filters, 3, kernel_size=kernel_size, pooling=pooling, head=head,
                                dense_units=dense_units, **options)
    x = np.random.default_rng(0).normal(size=(3, size, size, 2)).astype("float32")
    train_save_load(model, x, tmp_path)


# (argument, a bad value): drawn one at a time into an otherwise valid call.
BAD_VALUES = st.sampled_from([
    ("input_shape", ()), ("input_shape", (0,)), ("input_shape", "784"), ("input_shape", (2, 2, 2, 2)),
    ("units", []), ("units", [4, -1]), ("units", [2.5]), ("units", "32"), ("units", [True]),
    ("num_classes", 0), ("num_classes", 2.0), ("num_classes", None), ("num_classes", 1),
    ("activation", "relux"), ("activation", 7), ("activation", None),
    ("norm", "bacth"), ("norm", "instance"), ("norm", 3),
    ("norm_position", "middle"), ("norm_position", None),
    ("initializer", "he_nromal"), ("initializer", -1.0), ("initializer", float("nan")), ("initializer", [0.1]),
    ("bias_initializer", "auto"), ("bias_initializer", "nope"),
    ("dropout", -0.1), ("dropout", 1.0), ("dropout", "0.5"), ("dropout", float("nan")),
    ("norm_kwargs", {"momentum": 2.0}), ("norm_kwargs", {"bogus": 1}), ("norm_kwargs", "batch"),
    ("act_kwargs", {"alpha": 1.0}), ("act_kwargs", []),
    ("use_bias", "yes"), ("output_activation", "softmx"),
])


@seed(20261123)
@settings(max_examples=40, **BAD)
@given(bad=BAD_VALUES)
def test_every_invalid_dense_argument_names_itself_before_any_layer(bad, monkeypatch):
    argument, value = bad
    kwargs = dict(input_shape=(6,), units=[4], num_classes=3)
    kwargs[argument] = value
    with count_layers(monkeypatch) as created:
        with pytest.raises((ValueError, TypeError)) as info:
            keras_bn.build_dense(**kwargs)
    assert created == []
    message = str(info.value)
    names = {argument, "num_pieces", "momentum", "groups", "negative_slope", "epsilon"}
    assert any(f"`{name}`" in message for name in names), message
    assert "Received:" in message


@seed(20261123)
@settings(max_examples=15, **BAD)
@given(bad=st.sampled_from([
    ("filters", []), ("kernel_size", 0), ("kernel_size", 9), ("strides", 0), ("padding", "full"),
    ("pooling", "min"), ("head", "gap"), ("dense_units", [0]), ("data_format", "NHWC"),
    ("input_shape", (8,)), ("filters", [4] * 5),
]))
def test_every_invalid_conv_argument_names_itself_before_any_layer(bad, monkeypatch):
    argument, value = bad
    kwargs = dict(input_shape=(8, 8, 1), filters=[4], num_classes=3)
    kwargs[argument] = value
    with count_layers(monkeypatch) as created:
        with pytest.raises((ValueError, TypeError)) as info:
            keras_bn.build_conv(**kwargs)
    assert created == []
    message = str(info.value)
    assert f"`{argument}`" in message or ("filters" in argument and "feature map" in message), message
