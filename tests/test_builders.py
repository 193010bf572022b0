import numpy as np
import pytest

import keras
import keras_bn
from tests._layer_spy import count_layers
from keras_bn.activations import ACTIVATIONS
from keras_bn.norms import NORMS

SYNC_BN_TF_ONLY = pytest.mark.backends("tensorflow", reason="BatchNormalization(synchronized=True)")


def layer_names(model):
    return [layer.name for layer in model.layers]


def test_reference_mlp_is_dense_bn_relu_twice_then_dense():
    model = keras_bn.build_dense((784,), [32, 32], 10)
    assert layer_names(model) == [
        "inputs", "block1_dense", "block1_bn", "block1_relu",
        "block2_dense", "block2_bn", "block2_relu", "logits", "predictions",
    ]
    assert isinstance(model.get_layer("block1_bn"), keras.layers.BatchNormalization)
    assert model.get_layer("logits").units == 10
    assert model.count_params() == 784 * 32 + 4 * 32 + 32 * 32 + 4 * 32 + 32 * 10 + 10


@pytest.mark.parametrize(
    "norm, position, expected",
    [
        (None, "before", ["block1_dense", "block1_tanh"]),
        ("batch", "before", ["block1_dense", "block1_bn", "block1_tanh"]),
        ("batch", "after", ["block1_dense", "block1_tanh", "block1_bn"]),
        ("layer", "before", ["block1_dense", "block1_ln", "block1_tanh"]),
        ("layer", "after", ["block1_dense", "block1_tanh", "block1_ln"]),
        ("group", "before", ["block1_dense", "block1_gn", "block1_tanh"]),
        pytest.param("sync_batch", "after", ["block1_dense", "block1_tanh", "block1_syncbn"], marks=SYNC_BN_TF_ONLY),
    ],
)
def test_layer_order_for_each_norm_and_position(norm, position, expected):
    model = keras_bn.build_dense((8,), [16], 3, activation="tanh", norm=norm, norm_position=position)
    assert layer_names(model)[1:-2] == expected
    if norm == "sync_batch":
        assert model.get_layer("block1_syncbn").synchronized


@pytest.mark.parametrize(
    "norm, position, has_bias",
    [("batch", "before", False), ("group", "before", False), pytest.param("sync_batch", "before", False, marks=SYNC_BN_TF_ONLY),
     ("layer", "before", True), (None, "before", True), ("batch", "after", True)],
)
def test_bias_dropped_only_when_batch_or_group_norm_directly_follows(norm, position, has_bias):
    model = keras_bn.build_dense((8,), [16], 3, norm=norm, norm_position=position)
    dense = model.get_layer("block1_dense")
    assert dense.use_bias is has_bias
    assert len(dense.weights) == (2 if has_bias else 1)


def test_use_bias_true_keeps_the_bias_before_bn():
    model = keras_bn.build_dense((8,), [16], 3, use_bias=True)
    assert model.get_layer("block1_dense").use_bias


def test_conv_layer_order_pooling_and_head():
    model = keras_bn.build_conv((28, 28, 1), [8, 16], 10, dense_units=[12])
    assert layer_names(model) == [
        "inputs", "block1_conv", "block1_bn", "block1_relu", "block1_pool",
        "block2_conv", "block2_bn", "block2_relu", "block2_pool", "global_avg_pool",
        "block3_dense", "block3_bn", "block3_relu", "logits", "predictions",
    ]
    assert model.get_layer("block2_pool").output.shape == (None, 7, 7, 16)
    # BN on conv features keeps one statistic per channel (normalized over N, H, W).
    assert model.get_layer("block1_bn").moving_mean.shape == (8,)


def test_conv_accepts_2d_images_and_channels_first():
    model = keras_bn.build_conv((28, 28), [4], 10, data_format="channels_first", head="flatten", pooling=None)
    assert model.get_layer("add_channel").output.shape == (None, 1, 28, 28)
    assert model.get_layer("block1_bn").axis == 1


@pytest.mark.parametrize("activation", ACTIVATIONS.names() + ["swish"])
def test_every_activation_builds_and_takes_a_training_step(activation):
    model = keras_bn.build_dense((6,), [8, 8], 3, activation=activation)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    y = np.arange(16) % 3
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    changed = [not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(changed), f"weights not updated by a step with activation={activation}"


def test_conv_with_maxout_and_prelu_trains():
    for activation in ("maxout", "prelu"):
        model = keras_bn.build_conv((8, 8, 2), [4], 3, activation=activation)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        loss = model.train_on_batch(np.ones((4, 8, 8, 2), "float32"), np.array([0, 1, 2, 0]))
        assert np.isfinite(loss)
    prelu = model.get_layer("block1_prelu")
    assert prelu.alpha.shape == (1, 1, 4)  # one slope per channel, shared over H, W


def test_maxout_block_doubles_the_linear_width():
    model = keras_bn.build_dense((5,), [7], 2, activation="maxout", act_kwargs={"num_pieces": 3})
    assert model.get_layer("block1_dense").units == 21
    assert model.get_layer("block1_maxout").output.shape == (None, 7)


def test_selu_uses_lecun_normal_and_alpha_dropout():
    model = keras_bn.build_dense((5,), [7], 2, activation="selu", norm=None, dropout=0.1)
    assert isinstance(model.get_layer("block1_dense").kernel_initializer, keras.initializers.LecunNormal)
    assert isinstance(model.get_layer("block1_dropout"), keras.layers.AlphaDropout)


@pytest.mark.parametrize(
    "activation, expected",
    [("relu", keras.initializers.HeNormal), ("tanh", keras.initializers.GlorotUniform),
     ("sigmoid", keras.initializers.GlorotUniform), ("selu", keras.initializers.LecunNormal),
     ("leaky_relu", keras.initializers.HeNormal)],
)
def test_auto_initializer_follows_the_activation(activation, expected):
    model = keras_bn.build_dense((5,), [7], 2, activation=activation)
    assert type(model.get_layer("block1_dense").kernel_initializer) is expected


def test_bias_initializer_constant_for_relu_units():
    model = keras_bn.build_dense((5,), [7], 2, norm=None, bias_initializer=0.01)
    np.testing.assert_allclose(model.get_layer("block1_dense").bias.numpy(), 0.01)


@pytest.mark.parametrize("builder", ["dense", "conv"])
def test_keras_round_trip_without_custom_objects(builder, tmp_path):
    if builder == "dense":
        model = keras_bn.build_dense((6,), [8, 8], 3, activation="maxout", norm="group",
                                     norm_kwargs={"groups": 4}, dropout=0.1)
        x = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    else:
        model = keras_bn.build_conv((8, 8, 1), [4, 8], 3, activation="leaky_relu", norm="layer",
                                    act_kwargs={"negative_slope": 0.2})
        x = np.random.default_rng(1).normal(size=(4, 8, 8, 1)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert layer_names(loaded) == layer_names(model)


BAD_OPTIONS = [
    (dict(norm="bacth"), ValueError, r"Unknown `norm`: 'bacth'.*'batch', 'layer'.*Did you mean 'batch'"),
    (dict(units=[]), ValueError, r"`units` must be a non-empty list.*units=\[\]"),
    (dict(units=[32, 0]), ValueError, r"`units` must contain only positive integers; 0"),
    (dict(dropout=-0.1), ValueError, r"`dropout` must be in \[0, 1\).*dropout=-0.1"),
    (dict(dropout=1.0), ValueError, r"`dropout` must be in \[0, 1\)"),
    (dict(activation="relux"), ValueError, r"Unknown `activation`: 'relux'.*'leaky_relu'.*Did you mean 'relu'"),
    (dict(activation=3), TypeError, r"`activation` must be a name or a callable.*activation=3"),
    (dict(norm_position="middle"), ValueError, r"`norm_position` must be one of: 'before', 'after'.*middle"),
    (dict(initializer="he_nromal"), ValueError, r"Unknown `initializer`: 'he_nromal'.*Did you mean 'he_normal'"),
    (dict(initializer=-0.01), ValueError, r"`initializer`.*std.*initializer=-0.01"),
    (dict(num_classes=0), ValueError, r"`num_classes` must be an integer >= 1.*num_classes=0"),
    (dict(norm="group", norm_kwargs={"groups": 5}), ValueError, r"`groups` must divide the number of channels \(32\)"),
    (dict(norm="layer", norm_kwargs={"momentum": 0.9}), ValueError, r"norm 'layer' does not take: 'momentum'"),
    (dict(norm_kwargs={"momentum": 1.5}), ValueError, r"`momentum` must be in \[0, 1\).*1.5"),
    (dict(activation="relu", act_kwargs={"negative_slope": 0.1}), ValueError, r"activation 'relu' does not take: 'negative_slope'"),
    (dict(activation="maxout", act_kwargs={"num_pieces": 1}), ValueError, r"`num_pieces` must be >= 2"),
    (dict(output_activation="softmx"), ValueError, r"`output_activation` must be one of.*Did you mean 'softmax'"),
    (dict(input_shape=(0,)), ValueError, r"`input_shape` must contain only positive integers"),
]


@pytest.mark.parametrize("override, error, message", BAD_OPTIONS)
def test_bad_dense_option_fails_before_any_layer(override, error, message, monkeypatch):
    kwargs = dict(input_shape=(784,), units=[32, 32], num_classes=10)
    kwargs.update(override)
    with count_layers(monkeypatch) as created, pytest.raises(error, match=message):
        keras_bn.build_dense(**kwargs)
    assert created == []


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(kernel_size=40), r"`kernel_size` \(40\) is larger than the 28x28 feature map that block1"),
        (dict(filters=[8] * 6, kernel_size=1), r"block5 would shrink the feature map below 1x1"),
        (dict(pooling="min"), r"`pooling` must be one of: 'max', 'avg', None.*pooling='min'"),
        (dict(head="gap"), r"`head` must be one of: 'avg', 'max', 'flatten'"),
        (dict(input_shape=(784,)), r"`input_shape` must have 2 or 3 dimensions"),
        (dict(data_format="NCHW"), r"`data_format` must be one of"),
    ],
)
def test_bad_conv_option_fails_before_any_layer(override, message, monkeypatch):
    kwargs = dict(input_shape=(28, 28, 1), filters=[8, 16], num_classes=10)
    kwargs.update(override)
    with count_layers(monkeypatch) as created, pytest.raises(ValueError, match=message):
        keras_bn.build_conv(**kwargs)
    assert created == []


def test_layer_spy_sees_layers(monkeypatch):
    with count_layers(monkeypatch) as created:
        keras_bn.build_dense((4,), [3], 2)
    assert "Dense" in created and "BatchNormalization" in created


def test_registries_fold_case_and_aliases():
    assert NORMS.canonical("BatchNorm") == "batch"
    assert ACTIVATIONS.canonical("Leaky-ReLU") == "leaky_relu"
    model = keras_bn.build_dense((4,), [4], 2, norm="BN", activation="Leaky-ReLU")
    assert "block1_leaky_relu" in layer_names(model)


@pytest.mark.backends("tensorflow", reason="TensorFlow's CPU kernels for channels_first")
def test_channels_first_warns_at_build_exactly_when_tensorflow_cannot_run_it_here():
    """With oneDNN off (TF_ENABLE_ONEDNN_OPTS=0, or a CPU where TensorFlow leaves it off) NCHW
    convolutions do not run on the CPU outside XLA: the builder says so and names the ways out;
    where they run, it says nothing. CI runs this file both ways."""
    import warnings

    import tensorflow as tf

    from keras_bn import _backend

    try:
        tf.nn.conv2d(tf.zeros((1, 1, 2, 2)), tf.zeros((1, 1, 1, 1)), 1, "VALID", data_format="NCHW")
        runs = True
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        runs = bool(tf.config.list_logical_devices("GPU"))
    assert _backend.channels_first_runs() == runs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_bn.build_conv((1, 8, 8), [4], 3, data_format="channels_first")
    messages = [str(w.message) for w in caught if "channels_first" in str(w.message)]
    assert len(messages) == (0 if runs else 1)
    if messages:
        assert "jit_compile=True" in messages[0] and "channels_last" in messages[0]


def test_the_channels_first_warning_names_the_ways_out(monkeypatch):
    from keras_bn import _backend

    monkeypatch.setitem(_backend._NCHW_ON_CPU, "result", False)
    with pytest.warns(UserWarning, match=r"cannot run channels_first.*jit_compile=True.*channels_last"):
        keras_bn.ConvBlock(4, data_format="channels_first")
