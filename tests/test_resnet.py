import numpy as np
import pytest

import keras
import keras_bn
from keras_bn.initializers import Scaled
from keras_bn.norms import NORMS
from keras_bn.resnet import fixup_scale
from tests._layer_spy import count_layers

SMALL = dict(input_shape=(8, 8, 1), depth=None, num_classes=3, blocks_per_stage=1, widths=(4, 8, 8))


def small(**overrides):
    return keras_bn.build_resnet(**{**SMALL, **overrides})


def images(n=4, shape=(8, 8, 1), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def layer_names(model):
    return [layer.name for layer in model.layers]


def params_of(model, predicate):
    return sum(layer.count_params() for layer in model.layers if predicate(layer.name))


def test_resnet20_layout_and_parameter_count():
    model = keras_bn.build_resnet((32, 32, 3), 20, 10)
    names = layer_names(model)
    assert names[:11] == [
        "inputs", "stem_conv", "stem_bn", "stem_relu", "stage1_block1_conv1", "stage1_block1_bn1",
        "stage1_block1_relu1", "stage1_block1_conv2", "stage1_block1_bn2", "stage1_block1_add",
        "stage1_block1_out_relu",
    ]
    assert names[-3:] == ["global_avg_pool", "logits", "predictions"]
    assert sum(name.endswith("_add") for name in names) == 9  # 3 stages x 3 blocks
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers) == 19  # + logits = 20
    assert model.get_layer("stage3_block3_out_relu").output.shape == (None, 8, 8, 64)
    # Conv kernels (no bias under BN) + 4 BN values per channel + the classifier: He et al.'s 0.27M.
    convs = 3 * 3 * 3 * 16 + sum(9 * a * b for a, b in [(16, 16)] * 6 + [(16, 32), (32, 32)] + [(32, 32)] * 4
                                 + [(32, 64), (64, 64)] + [(64, 64)] * 4)
    bn = 4 * (16 * 7 + 32 * 6 + 64 * 6)
    assert model.count_params() == convs + bn + 64 * 10 + 10
    assert not model.get_layer("stage1_block1_conv1").use_bias


@pytest.mark.parametrize("depth, bottleneck, blocks", [(20, False, 3), (56, False, 9), (29, True, 3)])
def test_depth_is_6n_plus_2_or_9n_plus_2(depth, bottleneck, blocks):
    model = keras_bn.build_resnet((8, 8, 1), depth, 3, widths=(2, 2, 2), bottleneck=bottleneck)
    assert model.name == f"resnet{depth}"
    assert f"stage3_block{blocks}_add" in layer_names(model)
    assert f"stage3_block{blocks + 1}_add" not in layer_names(model)
    if bottleneck:
        assert model.get_layer("stage3_block1_conv3").filters == 8  # 4x expansion


@pytest.mark.parametrize("preactivation", [False, True])
@pytest.mark.parametrize("bottleneck", [False, True])
def test_plain_twin_has_the_same_parameters_option_a(preactivation, bottleneck):
    kwargs = dict(preactivation=preactivation, bottleneck=bottleneck)
    res, plain = small(**kwargs), small(residual=False, **kwargs)
    assert res.count_params() == plain.count_params()
    assert plain.name == "plain8" if not bottleneck else "plain11"
    assert not any(isinstance(layer, (keras.layers.Add, keras_bn.ZeroPadShortcut)) for layer in plain.layers)
    assert sum(isinstance(layer, keras_bn.ZeroPadShortcut) for layer in res.layers) == (3 if bottleneck else 2)
    assert [n for n in layer_names(plain)] == [n for n in layer_names(res) if not n.endswith(("_add", "_shortcut"))]


def test_projection_twins_differ_by_the_projections_only():
    res, plain = small(shortcut="projection"), small(shortcut="projection", residual=False)
    projections = params_of(res, lambda n: "_shortcut_" in n)
    # stage2: 1x1 conv 4->8 + BN(8); stage3 keeps 8 channels but strides: 1x1 conv 8->8 + BN(8).
    assert projections == (4 * 8 + 4 * 8) + (8 * 8 + 4 * 8)
    assert res.count_params() - plain.count_params() == projections


def test_zero_pad_shortcut_matches_numpy_both_formats():
    x = images(2, (5, 5, 3))
    y = keras.ops.convert_to_numpy(keras_bn.ZeroPadShortcut(7, strides=2)(x))
    expected = np.concatenate([x[:, ::2, ::2, :], np.zeros((2, 3, 3, 4), "float32")], axis=-1)
    np.testing.assert_array_equal(y, expected)
    xf = np.transpose(x, (0, 3, 1, 2))
    yf = keras.ops.convert_to_numpy(keras_bn.ZeroPadShortcut(7, strides=2, data_format="channels_first")(xf))
    np.testing.assert_array_equal(yf, np.transpose(expected, (0, 3, 1, 2)))
    with pytest.raises(ValueError, match="can only add channels"):
        keras_bn.ZeroPadShortcut(2)(x)


def _block_pairs(model, preactivation):
    """(block input tensor, block output tensor, block name) for every residual block."""
    out_name = "{}_add" if preactivation else "{}_out_relu"
    blocks = [n[: -len("_add")] for n in layer_names(model) if n.endswith("_add")]
    previous = model.get_layer("stem_conv" if preactivation else "stem_relu").output
    pairs = []
    for block in blocks:
        out = model.get_layer(out_name.format(block)).output
        pairs.append((previous, out, block))
        previous = out
    return pairs


@pytest.mark.parametrize("preactivation, norm", [(False, "batch"), (False, "layer"), (False, None),
                                                 (True, "batch"), (True, "group")])
def test_zero_init_makes_every_block_return_its_input(preactivation, norm):
    model = small(preactivation=preactivation, norm=norm, zero_init_residual=True, bias_initializer=0.05,
                  use_bias=True)
    pairs = _block_pairs(model, preactivation)
    probe = keras.Model(model.inputs, [t for pair in pairs for t in pair[:2]])
    x = images(6)
    for training in (False, True):
        values = [keras.ops.convert_to_numpy(v) for v in probe(x, training=training)]
        for k, (_, _, block) in enumerate(pairs):
            block_in, block_out = values[2 * k], values[2 * k + 1]
            if block_in.shape != block_out.shape:  # downsampling block: option A of its input
                block_in = keras.ops.convert_to_numpy(model.get_layer(f"{block}_shortcut")(block_in))
            np.testing.assert_array_equal(block_out, block_in, err_msg=f"{block}, training={training}")
    assert np.abs(values[1]).max() > 0  # not a dead network


def test_zero_init_targets_gamma_post_activation_and_kernel_pre_activation():
    post = small(zero_init_residual=True)
    assert np.all(post.get_layer("stage1_block1_bn2").gamma.numpy() == 0)
    assert np.all(post.get_layer("stage1_block1_bn1").gamma.numpy() == 1)
    assert np.abs(post.get_layer("stage1_block1_conv2").kernel.numpy()).max() > 0
    pre = small(zero_init_residual=True, preactivation=True)
    assert np.all(pre.get_layer("stage1_block1_conv2").kernel.numpy() == 0)
    assert np.all(pre.get_layer("stage1_block1_bn2").gamma.numpy() == 1)


def test_fixup_scales_match_the_formula():
    depth_blocks = 9  # ResNet-56: L = 27 branches of m = 2 convs -> L ** -0.5
    model = keras_bn.build_resnet((8, 8, 1), None, 3, blocks_per_stage=depth_blocks, widths=(16, 32, 64),
                                  norm=None, fixup=True)
    assert fixup_scale(27, 2) == pytest.approx(27 ** -0.5)
    assert fixup_scale(27, 3) == pytest.approx(27 ** -0.25)
    conv1 = model.get_layer("stage3_block2_conv1")
    assert isinstance(conv1.kernel_initializer, Scaled)
    assert conv1.kernel_initializer.factor == pytest.approx(27 ** -0.5)
    he_std = np.sqrt(2.0 / (3 * 3 * 64))
    kernel = conv1.kernel.numpy()
    assert kernel.std() == pytest.approx(he_std * 27 ** -0.5, rel=0.03)
    assert np.all(model.get_layer("stage3_block2_conv2").kernel.numpy() == 0)
    assert np.all(model.get_layer("logits").kernel.numpy() == 0)
    assert not conv1.use_bias
    block = ["stage1_block1_bias1a", "stage1_block1_conv1", "stage1_block1_bias1b", "stage1_block1_relu1",
             "stage1_block1_bias2a", "stage1_block1_conv2", "stage1_block1_scale", "stage1_block1_bias2b",
             "stage1_block1_add", "stage1_block1_out_relu"]
    names = layer_names(model)
    assert names[names.index(block[0]): names.index(block[0]) + len(block)] == block
    assert model.get_layer("stage1_block1_scale").value.numpy() == 1.0
    assert model.get_layer("stage1_block1_bias1a").value.numpy() == 0.0
    # Fixup starts every branch at zero: the net outputs a uniform softmax.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images())), 1 / 3, atol=1e-6)


def test_scaled_initializer_is_exactly_the_base_times_the_factor():
    base = keras.initializers.HeNormal(seed=3)
    values = keras.ops.convert_to_numpy(Scaled(keras.initializers.HeNormal(seed=3), 0.25)((3, 3, 4, 5)))
    np.testing.assert_allclose(values, 0.25 * keras.ops.convert_to_numpy(base((3, 3, 4, 5))), rtol=1e-6)


@pytest.mark.parametrize("overrides", [
    dict(fixup=True, norm=None),
    dict(preactivation=True, shortcut="projection", norm="group", dropout=0.1),
    dict(bottleneck=True, zero_init_residual=True, activation="leaky_relu", act_kwargs={"negative_slope": 0.2}),
])
def test_keras_round_trip_with_safe_mode(overrides, tmp_path):
    model = small(**overrides)
    x = images()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)  # no trace: fast
    model.train_on_batch(x, np.array([0, 1, 2, 0]))  # weights away from their initial values
    path = tmp_path / "resnet.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert layer_names(loaded) == layer_names(model)


@pytest.mark.parametrize("preactivation", [False, True])
@pytest.mark.parametrize("norm", [
    pytest.param(n, marks=pytest.mark.backends("tensorflow", reason="norm='sync_batch' is TensorFlow-only: the other backends refuse it (tests/test_backend_jax.py)"))
    if n == "sync_batch" else n for n in NORMS.names()])
def test_every_norm_and_position_takes_a_training_step(norm, preactivation):
    model = small(norm=norm, preactivation=preactivation)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)  # no trace: fast
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(images(), np.array([0, 1, 2, 0]))
    assert np.isfinite(loss)
    changed = [not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(changed), f"weights not updated with norm={norm}, preactivation={preactivation}"
    if norm != "none":
        suffix = keras_bn.norms.norm_suffix(norm)
        assert f"stage1_block1_{suffix}1" in layer_names(model)


def _randomize_bn(model, x, seed=0):
    """Moving statistics near the real ones of `x` (outputs stay of order 1), then perturbed."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(x, training=True)  # momentum 0: the moving statistics become this batch's
    rng = np.random.default_rng(seed)
    for layer in bns:
        c = layer.moving_mean.shape[0]
        std = np.sqrt(layer.moving_variance.numpy())
        layer.moving_mean.assign(layer.moving_mean.numpy() + rng.normal(0, 0.2, c) * std)
        layer.moving_variance.assign(layer.moving_variance.numpy() * rng.uniform(0.7, 1.4, c))
        layer.gamma.assign(rng.uniform(0.5, 1.5, c))
        layer.beta.assign(rng.normal(0, 0.2, c))


@pytest.mark.parametrize("shortcut", ["identity", "projection"])
def test_resnet20_folds_exactly_post_activation(shortcut):
    model = keras_bn.build_resnet((16, 16, 1), 20, 10, shortcut=shortcut, output_activation=None)
    x = images(8, (16, 16, 1))
    _randomize_bn(model, x)
    folded, report = keras_bn.fold_batchnorm(model, return_report=True)
    before, after = model.predict(x, verbose=0), folded.predict(x, verbose=0)
    assert 0.3 < np.abs(before).std() < 5  # outputs of order 1: a folding error shows at 1e-3 and more
    # float32 rounding through 20 layers, in another order: about 1e-6 of the largest output
    # (1.7e-6 seen on an AMD CPU with oneDNN off, where a fixed 1e-5 failed by 1e-8).
    np.testing.assert_allclose(after, before, atol=4e-6 * np.abs(before).max(), rtol=0)
    assert report.skipped == []
    assert len(report.folded) == 19 + (2 if shortcut == "projection" else 0)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)


def test_fold_report_names_the_pre_activation_norms_that_cannot_fold():
    model = small(preactivation=True, output_activation=None)
    x = images()
    _randomize_bn(model, x)
    folded, report = keras_bn.fold_batchnorm(model, return_report=True)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    kept = dict(report.skipped)
    assert kept == {
        "stage1_block1_bn1": "the output of 'stem_conv' has other consumers besides this BN",
        "stage2_block1_bn1": "follows 'stage1_block1_add' (Add), not a Dense/Conv layer",
        "stage3_block1_bn1": "follows 'stage2_block1_add' (Add), not a Dense/Conv layer",
        "final_bn": "follows 'stage3_block1_add' (Add), not a Dense/Conv layer",
    }
    assert [bn for bn, _, _ in report.folded] == [f"stage{s}_block1_bn2" for s in (1, 2, 3)]


BAD_OPTIONS = [
    (dict(depth=21, blocks_per_stage=None), ValueError, r"`depth` must be 6n \+ 2 .*e\.g\. 8, 20 or 56.*depth=21"),
    (dict(depth=20), ValueError, r"either `depth` or `blocks_per_stage`, not both"),
    (dict(blocks_per_stage=[1, 2]), ValueError, r"one entry per stage \(3, from `widths`\)"),
    (dict(bottleneck=True, depth=26, blocks_per_stage=None), ValueError, r"`depth` must be 9n \+ 2.*depth=26"),
    (dict(fixup=True), ValueError, r"`fixup=True` .* needs norm=None.*norm='batch'"),
    (dict(fixup=True, norm=None, preactivation=True), ValueError, r"preactivation=False"),
    (dict(zero_init_residual=True, residual=False), ValueError, r"needs residual=True"),
    (dict(zero_init_residual=True, norm_kwargs={"scale": False}), ValueError, r"scale=False \(no gamma\)"),
    (dict(activation="maxout"), ValueError, r"changes the channel count.*build_conv"),
    (dict(shortcut="option_a"), ValueError, r"`shortcut` must be one of: 'identity', 'projection'"),
    (dict(norm="bacth"), ValueError, r"Did you mean 'batch'"),
    (dict(residual="yes"), TypeError, r"`residual` must be True or False.*residual='yes'"),
    (dict(widths=[4, 0]), ValueError, r"`widths` must contain only positive integers"),
    (dict(norm="group", norm_kwargs={"groups": 3}), ValueError, r"`groups` must divide the number of channels \(4\)"),
    (dict(input_shape=(8,)), ValueError, r"`input_shape` must have 2 or 3 dimensions"),
    (dict(data_format="NHWC"), ValueError, r"`data_format` must be one of"),
]


@pytest.mark.parametrize("override, error, message", BAD_OPTIONS)
def test_bad_option_fails_before_any_layer(override, error, message, monkeypatch):
    with count_layers(monkeypatch) as created, pytest.raises(error, match=message):
        small(**override)
    assert created == []


def test_two_dimensional_images_get_a_channel_axis():
    model = keras_bn.build_resnet((8, 8), None, 2, blocks_per_stage=1, widths=(2,), output_activation="sigmoid")
    assert model.get_layer("add_channel").output.shape == (None, 8, 8, 1)
    assert model.output.shape == (None, 2)
