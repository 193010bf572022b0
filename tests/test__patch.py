"""Tests for keras_bn.callbacks._patch: replacing a method on an instance and putting it back."""

from __future__ import annotations

import keras
import numpy as np

from keras_bn.callbacks._patch import set_on_instance


def test_the_undo_brings_back_the_class_method_or_the_users_own_patch():
    layer = keras.layers.Dense(2)
    x = np.ones((1, 3), "float32")
    expected = keras.ops.convert_to_numpy(layer(x))
    undo = set_on_instance(layer, "call", lambda inputs, *a, **k: keras.ops.zeros((1, 2)))
    assert np.all(keras.ops.convert_to_numpy(layer(x)) == 0)
    undo()
    assert "call" not in vars(layer)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected)

    def users_own(grads_and_vars, *args, **kwargs):
        return "user's"

    optimizer = keras.optimizers.SGD()
    optimizer.apply = users_own
    undo = set_on_instance(optimizer, "apply", lambda *a, **k: "ours")
    assert optimizer.apply() == "ours"
    undo()
    assert optimizer.apply is users_own


def test_patching_skips_keras_object_tracking(monkeypatch):
    """The taps patch at every step: Keras' tracking __setattr__ would cost more than the patch."""
    calls = []
    original = keras.layers.Layer.__setattr__
    monkeypatch.setattr(keras.layers.Layer, "__setattr__", lambda self, n, v: (calls.append(n), original(self, n, v))[1])
    layer = keras.layers.Dense(2)
    calls.clear()
    set_on_instance(layer, "call", lambda *a, **k: None)()
    assert calls == []
