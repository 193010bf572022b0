"""`keras_bn.recipes._reuse`'s twin models: a ResNet and its plain twin trained on one traced
model (`twin_model`, `load_twin`, `ShortcutGate`) give the numbers of the nets themselves.

(The other helpers of `_reuse` are tested in tests/test_recipes_classic.py.)"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import keras_bn
from keras_bn.recipes import _common
from keras_bn.recipes._reuse import ShortcutGate


def _nets():
    keras.utils.set_random_seed(3)
    options = dict(widths=[2, 2, 4], norm_kwargs={"momentum": 0.9})
    return (keras_bn.build_resnet((6, 6, 1), 8, 3, residual=True, **options),
            keras_bn.build_resnet((6, 6, 1), 8, 3, residual=False, **options))


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
    twin = _common.twin_model(residual)
    gates = [layer for layer in twin.layers if isinstance(layer, ShortcutGate)]
    assert len(gates) == 3 and not any(isinstance(layer, keras.layers.Add) for layer in twin.layers)
    assert len(twin.trainable_weights) == len(residual.trainable_weights) == len(plain.trainable_weights)
    for built, gate in ((plain, 0.0), (residual, 1.0), (plain, 0.0)):
        _common.load_twin(twin, built, gate)
        assert all(float(layer.gate.numpy()) == gate for layer in gates)
        want, got = _outputs_and_kernel_grads(built, x, y), _outputs_and_kernel_grads(twin, x, y)
        for expected, actual in zip(want[:2], got[:2]):  # training- and inference-mode outputs
            np.testing.assert_array_equal(actual, expected)
        for expected, actual in zip(want[2], got[2]):
            np.testing.assert_array_equal(actual, expected)
    # the plain twin's output is not the residual net's (the gate matters)
    assert not np.allclose(_outputs_and_kernel_grads(residual, x, y)[1], _outputs_and_kernel_grads(plain, x, y)[1])


def test_a_twin_trains_as_the_net_itself_after_its_twin_trained():
    residual, plain = _nets()
    x, y = _data(48)
    twin = _common.twin_model(residual)

    def compile_(model):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    compile_(twin).fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # the residual net first
    _common.load_twin(twin, plain, 0.0)
    assert int(twin.optimizer.iterations.numpy()) == 0
    twin_loss = twin.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"]
    plain_loss = compile_(plain).fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(twin_loss, plain_loss, rtol=1e-6)
    for layer in plain.layers:
        for expected, actual in zip(layer.get_weights(), twin.get_layer(layer.name).get_weights()):
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7)


def test_shortcut_gate_round_trips_its_config():
    layer = ShortcutGate(gate=0.0, name="stage1_block1_add")
    again = ShortcutGate.from_config(layer.get_config())
    assert again.initial_gate == 0.0 and again.name == "stage1_block1_add"
    out = again([np.ones((1, 2), "float32"), np.full((1, 2), 3.0, "float32")])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), [[3.0, 3.0]])
