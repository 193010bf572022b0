"""`keras_bn.recipes._reuse`'s twin models: models that differ in one choice trained on one traced
model (`twin_model`, `load_twin`; `ShortcutGate`: a ResNet and its plain twin, `ActivationSwitch`:
one MLP with two activations) give the numbers of the models themselves.

(The other helpers of `_reuse` are tested in tests/test_recipes_classic.py.)"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bn
from keras_bn.recipes import _common
from keras_bn.recipes._reuse import ActivationSwitch, ShortcutGate


def _nets():
    keras.utils.set_random_seed(3)
    options = dict(widths=[2, 2, 4], norm_kwargs={"momentum": 0.9})
    return (keras_bn.build_resnet((6, 6, 1), 8, 3, residual=True, **options),
            keras_bn.build_resnet((6, 6, 1), 8, 3, residual=False, **options))


def _gated(residual):
    return _common.twin_model(residual, lambda layer: ShortcutGate(name=layer.name)
                              if isinstance(layer, keras.layers.Add) else None)


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6, 6, 1)).astype("float32"), rng.integers(0, 3, n).astype("int32")


def _outputs_and_kernel_grads(model, x, y):
    kernels = [layer.kernel for layer in model.layers if getattr(layer, "kernel", None) is not None]
    with _common.kept_state(model), tf.GradientTape() as tape:
        probs = model(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
    return probs.numpy(), model(x, training=False).numpy(), [g.numpy() for g in tape.gradient(loss, kernels)]


def test_a_twin_computes_the_residual_net_or_its_plain_twin_exactly():
    residual, plain = _nets()
    x, y = _data()
    twin = _gated(residual)
    gates = [layer for layer in twin.layers if isinstance(layer, ShortcutGate)]
    assert len(gates) == 3 and not any(isinstance(layer, keras.layers.Add) for layer in twin.layers)
    assert len(twin.trainable_weights) == len(residual.trainable_weights) == len(plain.trainable_weights)
    for built, choice in ((plain, "plain"), (residual, "residual"), (plain, "plain")):
        _common.load_twin(twin, built, choice)
        assert all(float(layer.index.numpy()) == ShortcutGate.choices.index(choice) for layer in gates)
        want, got = _outputs_and_kernel_grads(built, x, y), _outputs_and_kernel_grads(twin, x, y)
        for expected, actual in zip(want[:2], got[:2]):  # training- and inference-mode outputs
            np.testing.assert_array_equal(actual, expected)
        for expected, actual in zip(want[2], got[2]):
            np.testing.assert_array_equal(actual, expected)
    # the plain twin's output is not the residual net's (the gate matters)
    assert not np.allclose(_outputs_and_kernel_grads(residual, x, y)[1], _outputs_and_kernel_grads(plain, x, y)[1])


def test_an_activation_switch_computes_the_chosen_activation_and_its_gradient():
    x = np.array([[-30.0, -1.5, 0.0, 0.7, 40.0]], "float32")
    layer = ActivationSwitch(["sigmoid", "relu", "tanh"], name="block1_act")
    for name in ("relu", "sigmoid", "tanh"):
        layer(x)  # builds
        layer.select(name)
        xt = tf.constant(x)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            got, want = layer(xt), keras.activations.get(name)(xt)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        np.testing.assert_array_equal(tape.gradient(got, xt).numpy(), tape.gradient(want, xt).numpy())
    again = ActivationSwitch.from_config(layer.get_config())
    assert again.choices == ("sigmoid", "relu", "tanh") and again.name == "block1_act"
    expected = r"`choice` must be one of \['sigmoid', 'relu', 'tanh'\]. Received: choice='elu'"
    with pytest.raises(ValueError, match=expected):
        layer.select("elu")


def test_an_mlp_twin_trains_each_activation_as_its_own_model():
    """activation_comparison's quick mode: the sigmoid and relu MLPs (their own initial
    weights) on one traced model with `ActivationSwitch` layers, one after the other (the
    optimizer restarted), end with the weights each MLP gets when fitted itself."""
    x, y = np.random.default_rng(1).normal(size=(32, 5)).astype("float32"), np.arange(32) % 3
    nets = {}
    for activation in ("sigmoid", "relu"):
        keras.utils.set_random_seed(5)
        nets[activation] = keras_bn.build_dense((5,), [4, 4], 3, activation=activation, norm="batch")
    names = set(_common.activation_layer_names(nets["sigmoid"], "sigmoid"))
    twin = _common.twin_model(nets["sigmoid"], lambda layer: ActivationSwitch(["sigmoid", "relu"], name=layer.name)
                              if layer.name in names else None)
    twin.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    for activation in ("sigmoid", "relu"):
        built = nets[activation]
        _common.load_twin(twin, built, activation)
        np.testing.assert_array_equal(twin(x, training=False).numpy(), built(x, training=False).numpy())
        twin.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        built.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        built.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        for layer in (layer for layer in built.layers if layer.weights):
            for want, got in zip(layer.get_weights(), twin.get_layer(layer.name).get_weights()):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
