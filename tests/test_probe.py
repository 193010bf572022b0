"""Tests for keras_bn.callbacks._probe: the probe batch, the watched layers and the call taps
that read layer outputs on any model style (values checked against manual layer calls)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402
from keras_bn.callbacks import _probe  # noqa: E402
from tests._events import run_values  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error:keras_bn:RuntimeWarning")

LOSS = "sparse_categorical_crossentropy"


def read_run(run_dir):
    """``{tag: [(step, ndarray), ...]}`` from every event file of a run (keras-bn's reader)."""
    return run_values(run_dir)[0]


def last(values, tag):
    return float(values[tag][-1][1])


# --- the zoo of model styles -----------------------------------------------------------------
class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.hidden = keras.layers.Dense(6, activation="relu", name="hidden")
        self.act = keras.layers.Activation("gelu", name="act")
        self.head = keras.layers.Dense(3, activation="softmax", name="head")

    def call(self, inputs):
        return self.head(self.act(self.hidden(inputs)))


def _layers():
    return [keras.layers.Dense(6, activation="relu", name="hidden"), keras.layers.Activation("gelu", name="act"),
            keras.layers.Dense(3, activation="softmax", name="head")]


def unbuilt_sequential():
    return keras.Sequential(_layers(), name="seq"), ""


def built_sequential():
    return keras.Sequential([keras.Input((4,)), *_layers()], name="seq"), ""


def functional():
    inputs = keras.Input((4,))
    hidden, act, head = _layers()
    return keras.Model(inputs, head(act(hidden(inputs)))), ""


def nested_functional():
    inner_in = keras.Input((4,))
    hidden, act, head = _layers()
    inner = keras.Model(inner_in, act(hidden(inner_in)), name="inner")
    inputs = keras.Input((4,))
    return keras.Model(inputs, head(inner(inputs))), "inner/"


def subclassed():
    return Subclassed(), ""


STYLES = [unbuilt_sequential, built_sequential, functional, nested_functional, subclassed]


def manual_outputs(model, prefix, x):
    """The hidden and activation outputs, by calling the layers one by one (no probe code)."""
    hidden = next(layer for layer in _all_layers(model) if layer.name == "hidden")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in hidden.weights)
    h = np.maximum(x @ kernel + bias, 0.0)
    act = keras.ops.convert_to_numpy(keras.activations.gelu(h))
    return {prefix + "hidden": h, prefix + "act": act}


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


@pytest.mark.parametrize("make", STYLES, ids=[f.__name__ for f in STYLES])
def test_every_model_style_gets_the_numpy_statistics_of_its_layer_outputs(tmp_path, make):
    keras.utils.set_random_seed(3)
    model, prefix = make()
    model.compile(keras.optimizers.SGD(0.0), LOSS)  # lr 0: the weights stay as built
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 4)).astype("float32")
    y = np.arange(40) % 3
    callback = kbc.ActivationStats(str(tmp_path), x, every=1, figures=False)
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    values = read_run(str(tmp_path / "train"))
    watched = {t.split("/", 1)[1] for t in values if t.startswith("activation_mean/")}
    assert watched == {prefix + "hidden", prefix + "act"}  # the softmax head is not an activation
    for path, out in manual_outputs(model, prefix, x).items():
        assert last(values, f"activation_mean/{path}") == pytest.approx(out.mean(), rel=1e-5, abs=1e-7)
        assert last(values, f"activation_std/{path}") == pytest.approx(out.std(), rel=1e-5)
        assert values[f"activation_hist/{path}"][-1][1][:, 2].sum() == out.size
    relu = manual_outputs(model, prefix, x)[prefix + "hidden"]
    assert last(values, f"dead_fraction/{prefix}hidden") == pytest.approx(np.mean(np.all(relu <= 0, axis=0)), abs=1e-7)
    assert last(values, f"zero_fraction/{prefix}hidden") == pytest.approx(np.mean(relu <= 0), abs=1e-7)
    gelu = manual_outputs(model, prefix, x)[prefix + "act"]
    assert last(values, f"near_zero_fraction/{prefix}act") == pytest.approx(np.mean(np.abs(gelu) <= 0.05), abs=1e-7)
    # The taps are gone after the read: no instance-level `call` is left on any layer.
    assert not any("call" in vars(layer) for layer in _all_layers(model))


def test_a_watched_layer_the_model_does_not_call_warns_once_and_writes_nothing(tmp_path):
    class SkipsOne(keras.Model):
        def __init__(self):
            super().__init__(name="skips")
            self.used = keras.layers.Dense(4, activation="relu", name="used")
            self.unused = keras.layers.Dense(4, activation="tanh", name="unused")
            self.head = keras.layers.Dense(2, activation="softmax", name="head")

        def call(self, inputs):
            return self.head(self.used(inputs))

    model = SkipsOne()
    model(np.zeros((1, 3), "float32"))
    model.compile("sgd", LOSS)
    x, y = np.ones((4, 3), "float32"), np.arange(4) % 2
    callback = kbc.ActivationStats(str(tmp_path), x, every=1, figures=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[callback])
    messages = [str(w.message) for w in caught if "did not call" in str(w.message)]
    assert len(messages) == 1 and "'unused'" in messages[0]
    values = read_run(str(tmp_path / "train"))
    assert not [t for t in values if t.endswith("/unused")]
    assert "activation_mean/used" in values


def test_taps_restore_a_call_someone_else_set_on_the_instance():
    layer = keras.layers.Dense(2, name="d")
    layer.build((None, 3))

    def patched(*args, **kwargs):
        return type(layer).call(layer, *args, **kwargs) * 0.0

    layer.call = patched
    watch = _probe.Watch("d", layer, None, False)
    with _probe.LayerTaps([watch]) as taps:
        out = layer(np.ones((1, 3), "float32"))
    assert float(keras.ops.sum(out)) == 0.0 and taps.outputs["d"] is out
    assert vars(layer)["call"] is patched  # theirs, not ours, is back
    with pytest.raises(RuntimeError), _probe.LayerTaps([watch]):
        raise RuntimeError("the pass failed")
    assert vars(layer)["call"] is patched


def test_keras_bn_blocks_in_a_user_model_report_their_activation(tmp_path):
    inputs = keras.Input((5,))
    before = keras_bn.DenseBlock(6, activation="relu", norm="batch", name="before")(inputs)
    after = keras_bn.DenseBlock(4, activation="tanh", norm="batch", norm_position="after", name="after")(before)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(after))
    model.compile(keras.optimizers.SGD(0.0), LOSS)
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32") * 3
    model.fit(x[:4], np.arange(4) % 2, verbose=0, callbacks=[kbc.ActivationStats(str(tmp_path), x, every=1, figures=False)])
    values = read_run(str(tmp_path / "train"))
    block = model.get_layer("after")
    act_layer = next(s for s in block.sublayers if s.name == "after_tanh")
    first = keras.Model(model.inputs, model.get_layer("before").output).predict(x, verbose=0)
    dense_out = block.sublayers[0](first)
    tanh_out = keras.ops.convert_to_numpy(act_layer(dense_out))  # the block's activation, before its norm
    assert last(values, "saturation/after") == pytest.approx(np.mean(np.abs(tanh_out) > 0.97), abs=1e-7)
    assert last(values, "activation_mean/after") == pytest.approx(tanh_out.mean(), rel=1e-5, abs=1e-7)
    assert last(values, "dead_fraction/before") == pytest.approx(np.mean(np.all(first <= 0, axis=0)), abs=1e-7)
    # The input of the block's tanh (the pre-activation, unit 0): the BN paper's view.
    unit = np.sort(keras.ops.convert_to_numpy(dense_out)[:, 0])
    assert last(values, "preact/after/p50") == pytest.approx(unit[int(round(0.5 * (len(unit) - 1)))], rel=1e-5)


# --- the probe batch -------------------------------------------------------------------------
def test_a_cut_probe_says_so_once(tmp_path):
    x = np.zeros((20, 4), "float32")
    with pytest.warns(UserWarning, match=r"probe has 20 samples; only the first 8.*max_probe_samples=8") as caught:
        callback = kbc.ActivationStats(str(tmp_path), x, max_probe_samples=8)
    assert caught[0].filename == __file__  # points at the user's line
    with pytest.warns(UserWarning, match="probe has 20") as caught:
        kbc.diagnostics(str(tmp_path), probe=x, max_probe_samples=8)
    assert caught[0].filename == __file__
    assert callback.probe.shape == (8, 4) and np.shares_memory(callback.probe, x)  # a view, no copy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kbc.ActivationStats(str(tmp_path), x[:8], max_probe_samples=8)


@pytest.mark.parametrize("probe", [[], {}, np.zeros((0, 4))], ids=["list", "dict", "no_rows"])
def test_an_empty_probe_gets_a_clear_message(tmp_path, probe):
    with pytest.raises(ValueError, match=r"`probe`.*(empty|at least one sample).*Received"):
        kbc.ActivationStats(str(tmp_path), probe)


def test_probe_arrays_with_different_sample_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"same number in each array.*\(3, 2\).*\(4, 2\)"):
        kbc.ActivationStats(str(tmp_path), [np.zeros((3, 2)), np.zeros((4, 2))])


def test_a_subclassed_model_with_a_wrong_probe_is_refused_before_training(tmp_path):
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    model.compile("sgd", LOSS)
    callback = kbc.ActivationStats(str(tmp_path), np.zeros((4, 7), "float32"))
    with pytest.raises(ValueError, match=r"(?s)could not be run through model 'subclassed'.*probe shape=\(4, 7\)"):
        model.fit(np.zeros((4, 4), "float32"), np.zeros(4), verbose=0, callbacks=[callback])
    assert int(model.optimizer.iterations.numpy()) == 0
