"""Tests for keras_bn.folding: fold_batchnorm (check_batchnorm: tests/test_bn_stats.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import keras

import keras_bn
from keras_bn.folding import FoldReport, fold_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from xla_counts import xla_opcode_counts  # noqa: E402  (a benchmark helper, in benchmarks/)

TOL = 1e-5  # max abs difference, float32


TF_ONLY_SYNC_BN = pytest.mark.backends("tensorflow", reason="BatchNormalization(synchronized=True)")
TF_GRAPH_OPS = pytest.mark.backends("tensorflow", reason="counts the ops of a tf.function graph")


def _bn_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            yield layer
        elif isinstance(layer, keras.Model):
            yield from _bn_layers(layer)


def _randomize_bn(model, seed=0):
    """Non-trivial BN statistics and affine parameters, as after training."""
    rng = np.random.default_rng(seed)
    for bn in _bn_layers(model):
        c = bn.moving_mean.shape[0]
        bn.moving_mean.assign(rng.normal(0.0, 0.5, c))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, c))
        if bn.scale:
            bn.gamma.assign(rng.uniform(0.5, 1.5, c))
        if bn.center:
            bn.beta.assign(rng.normal(0.0, 0.5, c))


def _randomize_bias(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.5, layer.bias.shape))


def _x(model, batch=3, seed=2):
    shape = (batch, *model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _predict(model, x):
    try:
        return np.asarray(model(x, training=False))
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        # channels_first convolutions have no CPU kernel without oneDNN (TF_ENABLE_ONEDNN_OPTS=0);
        # XLA compiles them, so the folded model is still executed, not just checked on paper.
        return np.asarray(tf.function(lambda t: model(t, training=False), jit_compile=True)(tf.constant(x)))


def _max_diff(a, b, x):
    return float(np.max(np.abs(_predict(a, x) - _predict(b, x))))


def _count_bn(model):
    return sum(1 for _ in _bn_layers(model))


def _graph_ops(model, x):
    fn = tf.function(lambda t: model(t, training=False))
    return len(fn.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph.get_operations())


def _weights(model):
    return [np.array(v) for v in model.variables]


# --- builder models ---------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["batch", pytest.param("sync_batch", marks=TF_ONLY_SYNC_BN)])
@pytest.mark.parametrize("norm_position", ["before", "after"])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_builder_models_fold_and_agree(kind, norm_position, norm):
    if kind == "dense":
        model = keras_bn.build_dense((12,), [16, 8], 5, norm=norm, norm_position=norm_position, use_bias=True)
    else:
        model = keras_bn.build_conv((8, 8, 2), [4, 6], 5, norm=norm, norm_position=norm_position)
    _randomize_bn(model)
    _randomize_bias(model)
    before = _weights(model)
    folded, report = fold_batchnorm(model, return_report=True)
    x = _x(model)
    assert _max_diff(model, folded, x) < TOL
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model)))  # input untouched
    assert _count_bn(model) == 2
    if norm_position == "before":
        assert len(report.folded) == 2 and not report.skipped
        assert _count_bn(folded) == 0
        # the ReLU after each BN moved into the folded layer
        assert not any(layer.name.endswith("_relu") for layer in folded.layers)
    else:
        assert not report.folded and len(report.skipped) == 2
        assert all("activation" in reason for _, reason in report.skipped)
        assert _count_bn(folded) == 2


def test_softmax_head_fuses_into_logits_unless_dtypes_differ():
    model = keras_bn.build_conv((8, 8, 1), [4], 3)
    _randomize_bn(model)
    folded, report = fold_batchnorm(model, return_report=True)
    assert report.fused == [("predictions", "logits", "softmax")]
    assert [layer.name for layer in folded.layers][-1] == "logits"
    assert keras.activations.serialize(folded.get_layer("logits").activation) == "softmax"
    assert _max_diff(model, folded, _x(model)) < TOL
    assert "| predictions | fused  | softmax into logits " in str(report)
    # A mixed-precision model keeps its float32 softmax as a layer of its own.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = keras_bn.build_dense((6,), [4], 3, norm=None)
    finally:
        keras.config.set_dtype_policy("float32")
    mixed_folded, mixed_report = fold_batchnorm(mixed, return_report=True)
    assert mixed_report.fused == [("block1_relu", "block1_dense", "relu")]  # both mixed_float16
    assert mixed_folded.get_layer("predictions").dtype_policy.name == "float32"
    _, off = fold_batchnorm(model, fuse_activation=False, return_report=True)
    assert off.fused == [] and all(act is None for _, _, act in off.folded)


# --- every foldable layer type ----------------------------------------------------------

LAYER_CASES = {
    "dense": (lambda fmt, bias: keras.layers.Dense(6, use_bias=bias), (5,)),
    "dense_rank3": (lambda fmt, bias: keras.layers.Dense(6, use_bias=bias), (4, 5)),
    "conv1d": (lambda fmt, bias: keras.layers.Conv1D(6, 3, use_bias=bias, data_format=fmt), (9, 3)),
    "conv2d": (lambda fmt, bias: keras.layers.Conv2D(6, 3, use_bias=bias, data_format=fmt), (7, 7, 3)),
    "conv3d": (lambda fmt, bias: keras.layers.Conv3D(4, 2, use_bias=bias, data_format=fmt), (4, 4, 4, 2)),
    "depthwise2d": (
        lambda fmt, bias: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=bias, data_format=fmt),
        (7, 7, 3),
    ),
    "separable2d": (
        lambda fmt, bias: keras.layers.SeparableConv2D(4, 3, depth_multiplier=2, use_bias=bias, data_format=fmt),
        (7, 7, 3),
    ),
    "conv2d_transpose": (
        lambda fmt, bias: keras.layers.Conv2DTranspose(5, 3, strides=2, use_bias=bias, data_format=fmt),
        (4, 4, 3),
    ),
}


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize(
    "case, data_format",
    [(c, f) for c in sorted(LAYER_CASES) for f in ("channels_last", "channels_first")
     if not (c.startswith("dense") and f == "channels_first")],  # Dense has no data_format
)
def test_every_layer_type_folds(case, use_bias, data_format):
    make, shape = LAYER_CASES[case]
    if data_format == "channels_first":
        shape = shape[-1:] + shape[:-1]
    channel_axis = 1 if data_format == "channels_first" else -1
    inputs = keras.Input(shape)
    x = make(data_format, use_bias)(inputs)
    x = keras.layers.BatchNormalization(axis=channel_axis, name="bn")(x)
    outputs = keras.layers.Activation("tanh", name="act")(x)
    model = keras.Model(inputs, outputs)
    _randomize_bn(model)
    _randomize_bias(model)
    folded, report = fold_batchnorm(model, return_report=True)
    # channels_first convolutions are executed too (under XLA where TensorFlow has no CPU kernel).
    assert _max_diff(model, folded, _x(model)) < TOL
    assert [bn for bn, _, _ in report.folded] == ["bn"]
    assert report.folded[0][2] == "act:tanh"
    assert [type(layer) for layer in folded.layers[1:]] == [type(model.layers[1])]
    assert folded.layers[1].activation.__name__ == "tanh"


@pytest.mark.parametrize("spatial", [7, None])
def test_channels_first_bias_hazard_is_kept(spatial):
    # Keras 3.15's TF ops.add adds a (1, C, 1, 1) bias on the last axis when that axis also
    # has size C, so a channels_first fold is refused where the last spatial size may be C.
    inputs = keras.Input((3, spatial, spatial))
    x = keras.layers.Conv2D(5, 3, use_bias=False, data_format="channels_first")(inputs)
    outputs = keras.layers.BatchNormalization(axis=1, name="bn")(x)
    model = keras.Model(inputs, outputs)
    _randomize_bn(model)
    folded, report = fold_batchnorm(model, return_report=True)
    if keras.backend.backend() == "tensorflow":
        assert not report.folded and "wrong axis" in dict(report.skipped)["bn"]
    else:  # only TensorFlow's add has the hazard: on JAX and PyTorch the BN folds
        assert [name for name, *_ in report.folded] == ["bn"] and not report.skipped
    x = np.random.default_rng(0).normal(size=(2, 3, 7, 7)).astype("float32")
    assert _max_diff(model, folded, x) < TOL


def test_bn_without_scale_or_center_and_no_fusion():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(4, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(scale=False, center=False, epsilon=0.1)(x)
    outputs = keras.layers.ReLU()(x)
    model = keras.Model(inputs, outputs)
    _randomize_bn(model)
    folded = fold_batchnorm(model, fuse_activation=False)
    assert _max_diff(model, folded, _x(model)) < TOL
    assert [type(layer).__name__ for layer in folded.layers] == ["InputLayer", "Dense", "ReLU"]


# --- what is kept, and why -------------------------------------------------------------


def test_bn_after_activation_is_kept_and_outputs_agree():
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu", name="fc"),
        keras.layers.BatchNormalization(name="bn_after_act"),
        keras.layers.Dense(8, name="fc2"),
        keras.layers.ReLU(name="relu2"),
        keras.layers.BatchNormalization(name="bn_after_relu"),
    ])
    _randomize_bn(model)
    folded, report = fold_batchnorm(model, return_report=True)
    assert isinstance(folded, keras.Sequential)
    assert not report.folded
    reasons = dict(report.skipped)
    assert "activation 'relu'" in reasons["bn_after_act"]
    assert "'relu2'" in reasons["bn_after_relu"]
    assert _max_diff(model, folded, _x(model)) < TOL
    assert "kept" in str(report) and "bn_after_act" in str(report)


def test_kept_cases_multiple_consumers_wrong_axis_shared_and_input():
    inputs = keras.Input((5, 6))
    bn_input = keras.layers.BatchNormalization(name="bn_input")(inputs)
    a = keras.layers.Dense(6, name="fc_a")(bn_input)
    bn_branch = keras.layers.BatchNormalization(name="bn_branch")(a)
    merged = keras.layers.Add()([a, bn_branch])  # fc_a feeds the BN and the Add
    b = keras.layers.Dense(6, name="fc_b")(merged)
    bn_axis = keras.layers.BatchNormalization(axis=1, name="bn_axis")(b)  # not the channel axis
    shared = keras.layers.Dense(6, name="fc_shared")
    c = keras.layers.BatchNormalization(name="bn_shared")(shared(bn_axis))
    d = shared(c)
    model = keras.Model(inputs, d)
    _randomize_bn(model)
    folded, report = fold_batchnorm(model, return_report=True)
    reasons = dict(report.skipped)
    assert set(reasons) == {"bn_input", "bn_branch", "bn_axis", "bn_shared"}
    assert "model input" in reasons["bn_input"]
    assert "other consumers" in reasons["bn_branch"]
    assert "axis 1" in reasons["bn_axis"]
    assert "shared" in reasons["bn_shared"]
    assert _max_diff(model, folded, _x(model)) < TOL


# --- nested models and keras.applications -----------------------------------------------


def test_nested_sequential_and_functional():
    inner_seq = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, padding="same", name="c1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.ReLU(6.0, name="relu6"),
    ], name="stem")
    inner_in = keras.Input((8, 8, 4))
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(inner_in)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    inner_fn = keras.Model(inner_in, keras.layers.Add()([y, inner_in]), name="block")
    inputs = keras.Input((8, 8, 3))
    z = inner_fn(inner_seq(inputs))
    z = keras.layers.BatchNormalization(name="bn_outer")(z)  # follows a nested model: kept
    outputs = keras.layers.GlobalAveragePooling2D()(z)
    model = keras.Model(inputs, outputs)
    _randomize_bn(model)
    folded, report = fold_batchnorm(model, return_report=True)
    assert {(bn, into) for bn, into, _ in report.folded} == {("stem/bn1", "stem/c1"), ("block/bn2", "block/dw")}
    assert ("stem/bn1", "stem/c1", "relu6:relu6") in report.folded
    assert "nested model 'block'" in dict(report.skipped)["bn_outer"]
    assert _count_bn(folded) == 1
    assert isinstance(folded.get_layer("stem"), keras.Sequential)
    assert _max_diff(model, folded, _x(model)) < TOL


def _calibrate(model, x):
    """Moving statistics = the batch statistics of `x` (realistic activations everywhere)."""
    bns = list(_bn_layers(model))
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)
    for bn in bns:
        bn.momentum = 0.99


def _mobilenetv2():
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False, pooling="avg"
    )


@TF_GRAPH_OPS
def test_mobilenetv2_folds_with_same_agreement_and_fewer_ops():
    model = _mobilenetv2()
    _randomize_bn(model)  # moving variance in [0.5, 2]
    x = _x(model, batch=2)
    folded, report = fold_batchnorm(model, return_report=True)
    assert len(report.folded) == 52 and not report.skipped  # every BN, each with its ReLU6
    assert sum(act is not None for _, _, act in report.folded) == 35
    assert _count_bn(folded) == 0
    assert _max_diff(model, folded, x) < TOL
    assert _graph_ops(folded, x) < _graph_ops(model, x)


@pytest.mark.backends("tensorflow", "torch", reason="float64 arithmetic (JAX computes float64 in float32 unless jax_enable_x64)")
def test_mobilenetv2_calibrated_statistics_fold_exactly_in_float64():
    """Statistics of real activations include dead channels (moving variance ~1e-9, so
    gamma / sqrt(var + eps) ~ 40): there the float32 unfolded model itself is ~2e-4 away from
    float64 arithmetic (measured), so 1e-5 between two float32 models is out of reach. The
    fold is checked exactly in float64, and in float32 against the float64 truth."""
    rng = np.random.default_rng(0)
    model = _mobilenetv2()
    _calibrate(model, rng.normal(size=(16, 32, 32, 3)).astype("float32"))
    for bn in _bn_layers(model):
        bn.gamma.assign(rng.uniform(0.5, 1.5, bn.gamma.shape[0]))
        bn.beta.assign(rng.normal(0.0, 0.3, bn.beta.shape[0]))
    x = rng.normal(size=(2, 32, 32, 3))
    policy = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("float64")
        model64 = _mobilenetv2()
    finally:
        keras.config.set_dtype_policy(policy)
    model64.set_weights(model.get_weights())
    truth = np.asarray(model64(x))
    assert np.max(np.abs(np.asarray(fold_batchnorm(model64)(x)) - truth)) < 1e-9
    err_unfolded = np.max(np.abs(np.asarray(model(x.astype("float32"))) - truth))
    err_folded = np.max(np.abs(np.asarray(fold_batchnorm(model)(x.astype("float32"))) - truth))
    assert err_folded < 2 * err_unfolded + TOL, (err_folded, err_unfolded)


@TF_GRAPH_OPS
def test_small_cnn_has_fewer_graph_ops():
    model = keras_bn.build_conv((28, 28, 1), [8, 16], 10)
    _randomize_bn(model)
    x = _x(model)
    folded = fold_batchnorm(model)
    before, after = _graph_ops(model, x), _graph_ops(folded, x)
    assert after < before * 0.7, (before, after)


@pytest.mark.backends("tensorflow", reason="XLA opcode counts of a tf.function")
def test_small_cnn_compiles_to_less_xla_work():
    # XLA already fuses inference BN into the convolution's elementwise epilogue; the folded
    # model must compile to the same heavy ops and strictly fewer instructions overall
    # (benchmarks/bench_folding.py times the same two programs).
    model = keras_bn.build_conv((28, 28, 1), [8, 16], 10)
    _randomize_bn(model)
    x = _x(model)
    before, after = xla_opcode_counts(model, x), xla_opcode_counts(fold_batchnorm(model), x)
    for heavy in ("convolution", "dot"):
        assert after[heavy] == before[heavy] > 0, (heavy, before, after)
    assert sum(after.values()) < sum(before.values()), (before, after)
    assert after["fusion"] <= before["fusion"], (before, after)

# --- saving and serving -----------------------------------------------------------------


@pytest.fixture(scope="module")
def folded_cnn():
    norm = "sync_batch" if keras.backend.backend() == "tensorflow" else "batch"  # sync BN: TensorFlow only
    model = keras_bn.build_conv((12, 12, 1), [4, 8], 3, norm=norm)
    _randomize_bn(model)
    return model, fold_batchnorm(model)


def test_keras_file_round_trip(folded_cnn, tmp_path):
    model, folded = folded_cnn
    path = str(tmp_path / "folded.keras")
    folded.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: standard layers only
    x = _x(model)
    assert _max_diff(folded, loaded, x) == 0.0
    assert _max_diff(model, loaded, x) < TOL


@pytest.mark.backends("tensorflow", reason="SavedModel export read back with tf.saved_model.load")
def test_export_for_serving(folded_cnn, tmp_path):
    model, folded = folded_cnn
    path = str(tmp_path / "served")
    folded.export(path, verbose=False)
    served = tf.saved_model.load(path)
    x = _x(model)
    out = np.asarray(served.serve(tf.constant(x)))
    assert np.max(np.abs(out - np.asarray(model(x, training=False)))) < TOL


# --- bad inputs -------------------------------------------------------------------------


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.fc = keras.layers.Dense(2)

    def call(self, x):
        return self.fc(x)


def test_bad_inputs():
    with pytest.raises(TypeError, match="model='not a model'"):
        fold_batchnorm("not a model")
    sub = _Subclassed()
    sub(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match="Functional or Sequential"):
        fold_batchnorm(sub)
    with pytest.raises(ValueError, match="must be built"):
        fold_batchnorm(keras.Sequential([keras.layers.Dense(2)]))
    model = keras_bn.build_dense((4,), [3], 2)
    with pytest.raises(TypeError, match="fuse_activation='yes'"):
        fold_batchnorm(model, fuse_activation="yes")


def test_report_str():
    report = FoldReport(folded=[("bn", "conv", "relu:relu")], skipped=[("bn2", "follows a model input")])
    text = str(report)
    assert "1 BatchNormalization folded, 1 kept" in text
    assert "into conv (+ relu:relu)" in text and "follows a model input" in text


# --- private Keras names ----------------------------------------------------------------


@pytest.mark.backends("tensorflow", reason="the private names recorded are the TensorFlow trainer's")
def test_folding_and_the_training_tools_name_no_private_keras_attribute():
    import re

    from keras_bn import _keras_internals as internals

    root = Path(__file__).resolve().parents[1] / "keras_bn"
    pattern = re.compile(r"keras\.src|_nodes_by_depth|_keras_history|_flatten_layers|\bnode\.(operation|arguments)")
    for name in ("folding.py", "_fold_rules.py", "bn_stats.py", "search.py", "_search_types.py", "sanity.py", "_sanity_results.py",
                 "lr_find.py", "_training.py", "_tables.py"):
        hits = [line for line in (root / name).read_text().splitlines() if pattern.search(line)]
        assert not hits, (name, hits)
    ours = [entry for entry in internals.REQUIRED if entry[0].startswith(("keras.src.models.functional",
                                                                          "keras.src.ops", "keras.src.layers.layer"))]
    assert len(ours) >= 5 and not internals.missing_names(), internals.missing_names()
