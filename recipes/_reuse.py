"""Fitting many short runs without paying for tracing again (how quick modes stay quick).

A new model's first ``fit`` traces its train and test steps (1-3 s of CPU each on 2 cores,
more than a quick mode's training): `ready_to_fit` makes that one trace instead of two,
`EagerValidation` replaces the traced test step by direct calls with the same numbers, and
`initial_state` / `restart` / `compiled_like` train several settings of one architecture on
one traced model, and `twin_model` / `load_twin` train models that differ in one choice
(a ResNet and its plain twin, one MLP with two activations) on one.
Recipes reach these through `keras_bn.recipes._common`.

Usage::

    model = _common.compiled_like(cache, "relu", build(init), lambda m: m.compile("sgd", "mse"))
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

__all__ = ["ActivationSwitch", "EagerValidation", "ShortcutGate", "compiled_like", "copy_weights", "direct_predict",
           "initial_state", "load_twin", "ready_to_fit", "restart", "twin_model"]


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


class _Switch(keras.layers.Layer):
    """A layer computing one of its `choices`, picked by a non-trainable scalar (`select`), so
    that models differing only in that choice train on one traced model (`twin_model`). The
    picked computation is the same ops on the same values (``keras.ops.where``)."""

    choices: tuple = ()

    def build(self, input_shape):
        self.index = self.add_weight(shape=(), initializer="zeros", trainable=False, name="choice")
        super().build(input_shape)

    def select(self, choice: str) -> None:
        """Compute `choice` (one of `choices`) from now on."""
        if choice not in self.choices:
            raise ValueError(f"`choice` must be one of {list(self.choices)}. Received: choice={choice!r}")
        self.index.assign(float(self.choices.index(choice)))


class ShortcutGate(_Switch):
    """For inputs ``[shortcut, branch]``: ``shortcut + branch`` (choice "residual", what
    ``keras.layers.Add`` computes) or the branch alone (choice "plain": the plain twin's block;
    the shortcut then gets a zero gradient).

    Example::

        y = ShortcutGate(name="stage1_block1_add")([shortcut, branch])
    """

    choices = ("plain", "residual")

    def call(self, inputs):
        shortcut, branch = inputs
        return keras.ops.where(self.index > 0.5, shortcut + branch, branch)

    def compute_output_shape(self, input_shape):
        return input_shape[1]


class ActivationSwitch(_Switch):
    """One of the elementwise Keras activations `choices` (names such as "sigmoid", "relu").

    Example::

        y = ActivationSwitch(["sigmoid", "relu"], name="block1_act")(x)
    """

    def __init__(self, choices, **kwargs):
        super().__init__(**kwargs)
        self.choices = tuple(choices)
        self._functions = [keras.activations.get(name) for name in self.choices]

    def call(self, inputs):
        out = self._functions[0](inputs)
        for i, function in enumerate(self._functions[1:], start=1):
            out = keras.ops.where(keras.ops.abs(self.index - i) < 0.5, function(inputs), out)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "choices": list(self.choices)}


def twin_model(model: keras.Model, switch: Callable) -> keras.Model:
    """A copy of the Functional `model` (new layers, the same weights) in which each layer for
    which ``switch(layer)`` returns a `_Switch` layer is that layer: `load_twin` then trains every
    model that differs from `model` only in those layers' choice on this one traced model.

    Example::

        twin = twin_model(resnet, lambda layer: ShortcutGate(name=layer.name)
                          if isinstance(layer, keras.layers.Add) else None)
    """
    def clone(layer):
        # zeros: the weights are copied next, and random initializers would move the global
        # seed's stream, changing the initial weights of the models a recipe builds afterwards
        config = {key: "zeros" if key.endswith("_initializer") else value for key, value in layer.get_config().items()}
        return switch(layer) or layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone)
    copy_weights(model, twin)
    return twin


def load_twin(twin: keras.Model, built: keras.Model, choice: str) -> keras.Model:
    """Put `built`'s weights into `twin` (see `twin_model`; layer by layer, by name) and make
    every switch layer compute `choice`; a compiled `twin` also gets a fresh optimizer
    (`restart`). `twin` then trains as `built` would. Returns `twin`."""
    copy_weights(built, twin)
    for layer in twin.layers:
        if isinstance(layer, _Switch):
            layer.select(choice)
    return restart(twin, initial_state(twin)) if twin.compiled else twin


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Set the weights of each layer of `target` that has weights to those of the layer of
    `source` with its name (trainable and not: BN's moving statistics too)."""
    for layer in target.layers:
        if layer.weights and not isinstance(layer, _Switch):
            layer.set_weights(source.get_layer(layer.name).get_weights())
