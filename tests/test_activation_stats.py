"""Tests for the activation statistics: the reductions against NumPy, the families every
activation gets, one chunk vs many, the option ranges and caps, and no retracing warnings."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402
from keras_bn.activations import ACTIVATIONS, FAMILY_STATISTICS, activation_family, make_activation, saturation_band  # noqa: E402
from keras_bn.callbacks.activation_stats import OPTION_RANGES  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error:keras_bn:RuntimeWarning")

LOSS = "sparse_categorical_crossentropy"


# --- the reductions against NumPy --------------------------------------------------------------
def numpy_statistics(values, family, bins=30):
    """The statistics computed directly from their definitions (docs/activations.md)."""
    finite = values[np.isfinite(values)].astype(np.float64)
    stats = {"mean": finite.mean(), "std": finite.std(), "nonfinite": values.size - finite.size}
    units = values.reshape(-1, values.shape[-1])
    if family == "relu":
        stats["dead_fraction"] = np.mean(np.all(~(units > 0), axis=0))
        stats["zero_fraction"] = np.mean(finite <= 0)
    if family == "smooth":
        stats["near_zero_fraction"] = np.mean(np.abs(finite) <= 0.05)
    if family == "tanh":
        stats["saturation"] = np.mean(np.abs(finite) > 0.97)
    if family == "sigmoid":
        stats["saturation"] = np.mean(np.abs(2 * finite - 1) > 0.97)
    counts, edges = np.histogram(finite, bins=bins, range=(finite.min(), finite.max()))
    return stats, (edges, counts)


@pytest.mark.parametrize("family", [None, *FAMILY_STATISTICS])
def test_activation_statistics_match_numpy_with_nonfinite_values(family):
    rng = np.random.default_rng(5)
    values = rng.normal(size=(64, 3, 8)).astype("float32")
    if family == "relu":
        values = np.maximum(values, 0.0)
        values[..., 2] = 0.0  # a dead unit
    elif family == "tanh":
        values = np.tanh(3 * values)
    elif family == "sigmoid":
        values = 1 / (1 + np.exp(-4 * values))
    values[0, 0, 0], values[1, 1, 1] = np.nan, np.inf
    stats = keras_bn.activation_statistics(values, family)
    expected, (edges, counts) = numpy_statistics(values, family)
    assert set(stats) == set(expected) | {"histogram"}
    for name, value in expected.items():
        assert stats[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    np.testing.assert_allclose(stats["histogram"][0], edges, rtol=1e-6)
    # A value on a bin edge may fall on either side in float32 vs float64: totals agree, bins nearly.
    assert stats["histogram"][1].sum() == counts.sum() == values.size - 2
    assert np.abs(stats["histogram"][1] - counts).sum() <= 2


def test_a_layer_without_finite_values_gets_nan_not_zero():
    stats = keras_bn.activation_statistics(np.full((4, 3), np.nan, "float32"), "relu")
    assert np.isnan(stats["mean"]) and np.isnan(stats["std"]) and np.isnan(stats["zero_fraction"])
    assert stats["nonfinite"] == 12 and stats["histogram"][1].sum() == 0


def test_percentiles_are_nearest_rank_over_finite_values():
    values = np.array([5.0, np.nan, 1.0, 3.0, 2.0, 4.0, np.inf])
    np.testing.assert_array_equal(keras_bn.nearest_rank_percentiles(values, (0, 50, 100)), [1.0, 3.0, 5.0])
    assert np.isnan(keras_bn.nearest_rank_percentiles([np.nan])).all()


def test_one_saturation_definition_for_tanh_and_sigmoid():
    # sigmoid(x) = (1 + tanh(x / 2)) / 2: the band is the same point of both curves.
    assert saturation_band("tanh") == pytest.approx((-0.97, 0.97))
    assert saturation_band("sigmoid") == pytest.approx((0.015, 0.985))
    x = np.linspace(-12, 12, 2001).astype("float32")
    tanh_half = keras_bn.activation_statistics(np.tanh(x / 2)[:, None], "tanh")["saturation"]
    sigmoid = keras_bn.activation_statistics((1 / (1 + np.exp(-x)))[:, None], "sigmoid")["saturation"]
    assert sigmoid == pytest.approx(tanh_half, abs=1e-3)
    with pytest.raises(ValueError, match="family='relu'"):
        saturation_band("relu")


def test_recipes_use_the_callbacks_statistics():
    from keras_bn.recipes import _common

    values = 1 / (1 + np.exp(-3 * np.random.default_rng(0).normal(size=(50, 6)))).astype("float32")
    recipe = _common.activation_stats(values, "sigmoid")
    callback = keras_bn.activation_statistics(values, "sigmoid")
    assert recipe["saturated"] == callback["saturation"] and recipe["mean"] == callback["mean"]


# --- every activation recognised ---------------------------------------------------------------
@pytest.mark.parametrize(
    "layer, family",
    [
        (keras.layers.Activation("gelu"), "smooth"),
        (keras.layers.Activation("swish"), "smooth"),
        (keras.layers.Activation("silu"), "smooth"),
        (keras.layers.ELU(), "smooth"),
        (keras.layers.Activation("selu"), "smooth"),
        (keras.layers.Activation("softplus"), "smooth"),
        (keras.layers.Dense(3, activation="gelu"), "smooth"),
        (keras.layers.Conv2D(3, 3, activation="elu"), "smooth"),
        (keras.layers.Conv2D(3, 3, activation="relu6"), "relu"),
        (keras.layers.Activation("hard_sigmoid"), "sigmoid"),
        (keras.layers.Activation("softsign"), "tanh"),
        (keras_bn.DenseBlock(4, activation="gelu"), "smooth"),
        (keras_bn.ConvBlock(4, activation="leaky_relu"), "relu"),
        (keras_bn.DenseBlock(4, activation="tanh", norm_position="after"), "tanh"),
        (keras.layers.Activation("softmax"), None),
        (keras.layers.Dense(3), None),
    ],
)
def test_every_activation_has_its_family(layer, family):
    assert activation_family(layer) == family


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_the_registry_and_the_recognised_layers_share_one_vocabulary(name):
    spec = ACTIVATIONS.get(name)
    assert spec.family is None or spec.family in FAMILY_STATISTICS
    assert activation_family(make_activation(name)) == spec.family
    assert activation_family(keras_bn.DenseBlock(2, activation=name, norm=None)) == spec.family


def test_a_functional_model_of_every_family_logs_what_each_family_declares(tmp_path):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, name="dense")(inputs)
    outs = [keras.layers.Activation(a, name=a)(h) for a in ("relu", "gelu", "tanh", "sigmoid")]
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.Concatenate()(outs)))
    model.compile(keras.optimizers.SGD(0.0), LOSS)
    x = np.random.default_rng(1).normal(size=(32, 4)).astype("float32") * 2
    callback = kbc.ActivationStats(str(tmp_path), x, every=1, figures=False)
    model.fit(x[:4], np.arange(4) % 2, verbose=0, callbacks=[callback])
    pre = keras.Model(inputs, h).predict(x, verbose=0)
    results = callback._results()
    for name in ("relu", "gelu", "tanh", "sigmoid"):
        out = keras.Model(inputs, model.get_layer(name).output).predict(x, verbose=0)
        expected, _ = numpy_statistics(out, activation_family(model.get_layer(name)))
        got = {k: v for k, v in results[name].items() if k not in ("histogram", "preact")}
        assert got.keys() == expected.keys(), name
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, key)
    assert results["tanh"]["preact"] == pytest.approx(keras_bn.nearest_rank_percentiles(pre[:, 0]))


# --- one chunk or many: the same numbers, within the memory budget -------------------------------
def conv_net(channels=16):
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(channels, 3, padding="same", name="wide")(inputs)  # not watched
    h = keras.layers.MaxPooling2D(4, name="pool")(h)
    h = keras.layers.ReLU(name="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.Flatten()(h)))


def test_chunks_are_sized_by_every_layer_output_not_only_the_watched_ones(tmp_path):
    model = conv_net()
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 2)).astype("float32")
    x[5, 0, 0, 0] = np.nan
    wide_bytes = 4 * 8 * 8 * 16  # the unwatched conv output of one sample, 16x the watched one
    budget_mb = 10 * wide_bytes / 2**20
    whole = kbc.ActivationStats(str(tmp_path), x, figures=False)
    whole.set_model(model)
    chunked = kbc.ActivationStats(str(tmp_path), x, figures=False, max_probe_mb=budget_mb)
    chunked.set_model(model)
    assert whole._chunk_rows == 64
    assert 1 <= chunked._chunk_rows <= 10  # counting only the watched output would allow 160
    a, b = whole._results()["relu"], chunked._results()["relu"]
    relu_out = keras.Model(model.inputs, model.get_layer("relu").output).predict(x, verbose=0)
    expected, (edges, counts) = numpy_statistics(relu_out, "relu")
    for stats in (a, b):
        for key, value in expected.items():
            assert stats[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        np.testing.assert_allclose(stats["histogram"][0], edges, rtol=1e-6)
        assert stats["histogram"][1].sum() == counts.sum()
    np.testing.assert_array_equal(a["histogram"][1], b["histogram"][1])


def test_one_sample_over_the_budget_warns_and_reads_one_at_a_time(tmp_path):
    model = conv_net()
    x = np.zeros((3, 8, 8, 2), "float32")
    callback = kbc.ActivationStats(str(tmp_path), x, figures=False, max_probe_mb=1e-4)
    with pytest.warns(UserWarning, match=r"one probe sample needs about .* MiB.*max_probe_mb=0.0001"):
        callback.set_model(model)
    assert callback._chunk_rows == 1


# --- option ranges ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bins", "max_probe_samples"])
def test_integer_options_are_accepted_at_their_cap_and_refused_above(tmp_path, name):
    low, cap = OPTION_RANGES[name]
    assert getattr(kbc.ActivationStats(str(tmp_path), np.zeros((2, 3)), **{name: cap}), name) == cap
    with pytest.raises(ValueError, match=rf"`{name}` must be in \[1, {cap}\]. Received: {name}={cap + 1}"):
        kbc.ActivationStats(str(tmp_path), np.zeros((2, 3)), **{name: cap + 1})
    with pytest.raises(ValueError, match=rf"{name}=0"):
        kbc.ActivationStats(str(tmp_path), np.zeros((2, 3)), **{name: low - 1})


def test_huge_bins_are_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"`bins` must be in \[1, 1024\]. Received: bins=1000000000"):
        kbc.diagnostics(str(tmp_path), probe=np.zeros((2, 3)), bins=10**9)


@pytest.mark.parametrize("name, good, bad", [
    ("max_probe_mb", 4096.0, 4096.5), ("max_probe_mb", 0.5, 0.0), ("saturation_threshold", 0.999, 1.0),
    ("saturation_threshold", 0.01, 0.0), ("near_zero", 1.0, 1.01), ("near_zero", 1e-6, 0.0),
    ("max_overhead", 1.0, 1.5), ("max_probe_mb", 1.0, float("nan")), ("near_zero", 0.1, float("inf")),
])
def test_float_options_are_range_checked(tmp_path, name, good, bad):
    assert getattr(kbc.ActivationStats(str(tmp_path), np.zeros((2, 3)), **{name: good}), name) == good
    with pytest.raises(ValueError, match=rf"`{name}` must be in .* Received: {name}="):
        kbc.ActivationStats(str(tmp_path), np.zeros((2, 3)), **{name: bad})


def test_unknown_options_are_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match="unexpected option `bin`"):
        kbc.ActivationStats(str(tmp_path), np.zeros((2, 3)), bin=10)


# --- no retracing warnings ----------------------------------------------------------------------
@pytest.mark.backends("tensorflow", reason="tf.function retracing warnings: the probe is traced only on TensorFlow")
def test_new_models_and_callbacks_trigger_no_retracing_warning(tmp_path):
    import tensorflow as tf

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    try:
        for i in range(7):  # as a recipe does: a new model and callback per run
            model = keras_bn.build_dense(4, [5], 2)
            model.compile("sgd", LOSS)
            x = np.random.default_rng(i).normal(size=(8, 4)).astype("float32")
            cb = kbc.ActivationStats(str(tmp_path / str(i)), x, every=1, figures=False,
                                     max_probe_mb=(4 * 40) / 2**20 if i % 2 else 256.0)  # some read in chunks
            model.fit(x, np.arange(8) % 2, batch_size=4, verbose=0, callbacks=[cb])
        ours = [m for m in messages if "retracing" in m and any(n in m for n in ("ActivationStats", "probe_pass", "keras_bn"))]
        assert ours == []
        # Control: closures made in a loop do trigger it, so the handler sees such warnings.
        for i in range(7):
            tf.function(lambda v, k=i: v * k)(tf.constant(1.0))
        assert any("retracing" in m for m in messages)
    finally:
        tf.get_logger().removeHandler(handler)


# --- the docs page's examples run ----------------------------------------------------------------
def test_docs_activations_examples_run_in_order(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "activations.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 2
    script = "\n".join(blocks)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "['block', 'hidden']" and lines[1].endswith(" 8192.0") and float(lines[2]) >= 0.0


def test_channels_first_units_are_the_channel_axis():
    values = np.abs(np.random.default_rng(2).normal(size=(8, 4, 5, 5))).astype("float32")
    values[:, 1] = 0.0  # channel 1 is dead everywhere
    assert keras_bn.activation_statistics(values, "relu", feature_axis=1)["dead_fraction"] == 0.25
    assert keras_bn.activation_statistics(values, "relu")["dead_fraction"] == 0.0  # last axis: no unit dead
    layer = keras_bn.ConvBlock(4, data_format="channels_first")
    from keras_bn.callbacks._probe import _feature_axis

    assert _feature_axis(layer) == 1 and _feature_axis(keras.layers.ReLU()) == -1
