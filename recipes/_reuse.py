"""Fitting many short runs without paying for tracing again (how quick modes stay quick).

A new model's first ``fit`` traces its train and test steps (1-3 s of CPU each on 2 cores,
more than a quick mode's training): `ready_to_fit` makes that one trace instead of two,
`EagerValidation` replaces the traced test step by direct calls with the same numbers, and
`initial_state` / `restart` / `compiled_like` train several settings of one architecture on
one traced model, and `twin_model` / `load_twin` train a ResNet and its plain twin on one.
Recipes reach these through `keras_bn.recipes._common`.

Usage::

    model = _common.compiled_like(cache, "relu", build(init), lambda m: m.compile("sgd", "mse"))
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

__all__ = ["EagerValidation", "ShortcutGate", "compiled_like", "direct_predict", "initial_state", "load_twin",
           "ready_to_fit", "restart", "twin_model"]


def direct_predict(model, x, batch_size: int = 500) -> np.ndarray:
    """``model.predict(x)`` by direct ``model(chunk, training=False)`` calls: the same numbers,
    without tracing a predict function for a few calls."""
    return np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + batch_size], training=False))
                           for i in range(0, len(x), batch_size)])


class EagerValidation(keras.callbacks.Callback):
    """Adds ``val_loss`` and ``val_accuracy`` to each epoch's logs, the numbers
    ``fit(validation_data=(x, y))`` gives a model compiled with sparse categorical
    cross-entropy on probabilities and ``metrics=["accuracy"]`` (inference mode, the mean over
    every sample, plus the model's regularization losses), from direct model calls in
    chunks of `batch_size`: a short fit then does not trace a test step (about 1 s of CPU
    per conv net). Put it first in the callbacks, so the others see the values.

    Example::

        model.fit(x, y, epochs=2, callbacks=[EagerValidation(x_test, y_test), *callbacks])
    """

    def __init__(self, x, y, batch_size: int = 500):
        super().__init__()
        self.x, self.y, self.batch_size = x, np.asarray(y), batch_size

    @staticmethod
    def applies_to(model: keras.Model) -> bool:
        """Whether `model` was compiled with the loss this callback computes."""
        loss = model.loss
        if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
            return not loss.get_config().get("from_logits", False)
        return loss == "sparse_categorical_crossentropy"

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        # float32, as Keras' losses and metrics compute under mixed precision
        probs = direct_predict(self.model, self.x, self.batch_size).astype("float32")
        loss = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(self.y, probs))
        regularization = sum(float(keras.ops.convert_to_numpy(v)) for v in self.model.losses)
        logs["val_loss"] = float(np.mean(loss)) + regularization
        logs["val_accuracy"] = float(np.mean(np.argmax(probs, axis=-1) == self.y))


def initial_state(model: keras.Model) -> list:
    """A copy of every variable of `model` (weights and BN's moving statistics), for `restart`."""
    return [keras.ops.convert_to_numpy(v) for v in model.variables]


def restart(model: keras.Model, state: list, learning_rate: float | None = None) -> keras.Model:
    """Put a compiled `model` back to `state` (see `initial_state`) with a fresh optimizer: its
    slots and step count zeroed, its learning rate `learning_rate` (default: unchanged).

    The next ``fit`` then trains as a freshly built and compiled copy would, but reuses the
    train, test and probe functions Keras and the diagnostics traced for this model (the
    fixed cost of a new model, about 2 s of CPU each): how a quick mode runs several
    settings of one architecture.

    Example::

        state = initial_state(model)
        for lr in (0.1, 1.0):
            restart(model, state, learning_rate=lr).fit(x, y)
    """
    for variable, value in zip(model.variables, state):
        variable.assign(value)
    optimizer = model.optimizer
    rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate)) if learning_rate is None else learning_rate
    for variable in optimizer.variables:
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    optimizer.learning_rate = rate
    return model


def compiled_like(cache: dict, key, model: keras.Model, compile: Callable) -> keras.Model:
    """A compiled model starting from `model`'s initial state: `model` itself, compiled by
    ``compile(model)``, the first time `key` is seen; later the model cached under `key` (the
    same architecture and compile), `restart`-ed from `model`'s state, so nothing is traced again.

    Example::

        cache = {}
        for init in ("glorot_uniform", "he_normal"):
            model = compiled_like(cache, "relu", build(init), lambda m: m.compile("sgd", "mse"))
    """
    target = cache.get(key)
    if target is None:
        compile(model)
        cache[key] = model
        return model
    return restart(target, initial_state(model))


def ready_to_fit(model: keras.Model, x, y) -> keras.Model:
    """Create now, from one batch `x`, `y`, every variable the first ``fit`` step of the
    compiled `model` would create (compiled metrics, loss trackers, optimizer slots): Keras
    otherwise makes them inside the first traced train step, and TensorFlow then traces that
    step twice (1-2 s of CPU per model). The training is the same. Returns `model`.

    Example::

        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        _common.ready_to_fit(model, x_train[:64], y_train[:64]).fit(x_train, y_train)
    """
    from keras_bn import _keras_internals

    _keras_internals.build_for_fit(model, x, y)
    return model


class ShortcutGate(keras.layers.Layer):
    """``gate * shortcut + branch`` for inputs ``[shortcut, branch]``, with a non-trainable scalar
    `gate`: 1 is ``keras.layers.Add`` (``1 * s`` is `s`), 0 the plain twin's sum exactly (the
    branch plus zeros; the shortcut's gradient is zero), so one traced model trains both twins.

    Example::

        y = ShortcutGate(gate=0.0, name="stage1_block1_add")([shortcut, branch])
    """

    def __init__(self, gate: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_gate = float(gate)

    def build(self, input_shape):
        self.gate = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_gate),
                                    trainable=False, name="gate")
        super().build(input_shape)

    def call(self, inputs):
        shortcut, branch = inputs
        return keras.ops.cast(self.gate, shortcut.dtype) * shortcut + branch

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return {**super().get_config(), "gate": self.initial_gate}


def twin_model(residual: keras.Model) -> keras.Model:
    """A copy of the Functional `residual` net (new layers, the same weights) whose shortcut sums
    (``keras.layers.Add``) are `ShortcutGate` layers: `load_twin` then trains the net itself or
    its plain twin (``keras_bn.build_resnet(..., residual=False)``) on this one model.

    Example::

        twin = twin_model(keras_bn.build_resnet((14, 14, 1), 8, 10))
    """
    twin = keras.models.clone_model(residual, clone_function=lambda layer: (
        ShortcutGate(name=layer.name) if isinstance(layer, keras.layers.Add)
        else layer.__class__.from_config(layer.get_config())))
    load_twin(twin, residual, gate=1.0)
    return twin


def load_twin(twin: keras.Model, built: keras.Model, gate: float) -> keras.Model:
    """Put `built`'s weights (layer by layer, by name) into `twin` (see `twin_model`) and every
    gate to `gate`: 1 for the residual net, 0 for its plain twin (the same layers without the
    sums). A compiled `twin` also gets a fresh optimizer (`restart`). Returns `twin`."""
    for layer in twin.layers:
        if isinstance(layer, ShortcutGate):
            layer.gate.assign(gate)
        elif layer.weights:
            layer.set_weights(built.get_layer(layer.name).get_weights())
    return restart(twin, initial_state(twin)) if twin.compiled else twin
