"""keras_bn.optimizers: each preset yields the optimizer and clipping its docstring states."""

import keras
import numpy as np
import pytest

from keras_bn import optimizers


@pytest.mark.parametrize("name", optimizers.list_presets())
def test_preset_yields_documented_optimizer_and_clipping(name):
    preset = optimizers.get_preset(name)
    opt = optimizers.adam(name)
    assert isinstance(opt, keras.optimizers.Adam)  # on torch, Keras' own torch subclass
    assert optimizers.clipping_of(opt) == preset.clipping
    assert float(opt.learning_rate) == pytest.approx(preset.kwargs["learning_rate"])
    for key in ("clipnorm", "global_clipnorm"):
        assert getattr(opt, key) == preset.kwargs.get(key)
    word = {"none": "no clipping", "per_variable": "clipnorm", "global": "global_clipnorm"}[preset.clipping]
    assert word in preset.description


def test_rnn_preset_is_the_notes_setting():
    opt = optimizers.adam("rnn")
    assert float(opt.learning_rate) == pytest.approx(1e-4) and opt.clipnorm == 1.0 and opt.global_clipnorm is None


def test_per_variable_and_global_clipping_differ_numerically():
    grads = [keras.ops.convert_to_tensor([3.0, 4.0]), keras.ops.convert_to_tensor([0.1])]  # norms 5 and 0.1
    per_var = [np.asarray(g) for g in optimizers.adam("clip_per_variable")._clip_gradients(grads)]
    global_ = [np.asarray(g) for g in optimizers.adam("global_clip")._clip_gradients(grads)]
    assert np.linalg.norm(per_var[0]) == pytest.approx(1.0, rel=1e-5)
    assert per_var[1] == pytest.approx([0.1])  # small gradient untouched
    total = np.sqrt(sum(np.sum(g**2) for g in global_))
    assert total == pytest.approx(1.0, rel=1e-5)
    assert global_[1] == pytest.approx([0.1 / np.sqrt(25.01)], rel=1e-4)  # scaled by the same factor


def test_overrides_pass_through():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 100, 0.5)
    opt = optimizers.adam("global_clip", learning_rate=schedule)
    assert opt._learning_rate is schedule and opt.global_clipnorm == 1.0
    swapped = optimizers.adam("rnn", global_clipnorm=2.0)
    assert swapped.clipnorm is None and swapped.global_clipnorm == 2.0
    assert float(swapped.learning_rate) == pytest.approx(1e-4)
    decayed = optimizers.adam("default", weight_decay=1e-4)
    assert isinstance(decayed, keras.optimizers.AdamW) and decayed.weight_decay == pytest.approx(1e-4)
    assert optimizers.adam("clipnorm").clipnorm == 1.0  # alias


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="bogus") as info:
        optimizers.adam("bogus")
    for name in optimizers.list_presets():
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="Did you mean 'global_clip'"):
        optimizers.adam("global_clp")


@pytest.mark.parametrize("kwargs, bad", [({"learning_rate": -0.5}, "-0.5"), ({"weight_decay": -1.0}, "-1.0")])
def test_bad_values_raise_naming_the_value(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        optimizers.adam(**kwargs)


def test_preset_is_frozen():
    preset = optimizers.get_preset("default")
    with pytest.raises(Exception):
        preset.name = "x"
    with pytest.raises(TypeError):
        preset.kwargs["learning_rate"] = 1.0
