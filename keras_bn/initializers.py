"""Initializer lookup by name, with ``"auto"`` picking the one that suits the activation.

Accepted values: ``"auto"``; a name (``he_normal``, ``he_uniform``, ``glorot_normal``,
``glorot_uniform``, ``lecun_normal``, ``lecun_uniform``, ``zeros``, ``ones``, also
``xavier_*``/``kaiming_*`` aliases); a number ``s`` meaning a plain N(0, s^2) (the 0.01 / 0.05
demonstrations of SEEDS §4); any Keras initializer object, config dict or name.

Usage::

    get_initializer("auto", activation="tanh")  # GlorotUniform
    get_initializer(0.01)                        # RandomNormal(stddev=0.01)
"""

from __future__ import annotations

import numbers

import keras

from keras_bn._registry import Registry
from keras_bn.activations import default_initializer

__all__ = ["INITIALIZERS", "Scaled", "check_bias_initializer", "check_initializer", "get_bias_initializer",
           "get_initializer"]

INITIALIZERS: Registry[str] = Registry(
    "initializer",
    {
        name: name
        for name in (
            "auto",
            "he_normal",
            "he_uniform",
            "glorot_normal",
            "glorot_uniform",
            "lecun_normal",
            "lecun_uniform",
            "zeros",
            "ones",
        )
    },
    aliases={
        "kaiming_normal": "he_normal",
        "kaiming_uniform": "he_uniform",
        "xavier_normal": "glorot_normal",
        "xavier_uniform": "glorot_uniform",
        "zero": "zeros",
    },
)


def _check_std(value: float, name: str) -> float:
    if value != value or value < 0 or value in (float("inf"),):
        raise ValueError(
            f"`{name}` as a number is the std of a N(0, std^2) init and must be finite and "
            f">= 0. Received: {name}={value!r}"
        )
    return float(value)


def check_initializer(value: object, name: str = "initializer") -> object:
    """Validate `value` without building it; return it unchanged."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be a name, a number or a Keras initializer. Received: {name}={value!r}")
    if isinstance(value, numbers.Real):
        _check_std(value, name)
        return value
    if isinstance(value, str):
        if value in INITIALIZERS:
            return value
        try:
            keras.initializers.get(value)
        except ValueError:
            raise ValueError(
                INITIALIZERS.unknown_message(value, extra=", a number (normal std), or any name of keras.initializers")
                .replace("`initializer`", f"`{name}`")
            ) from None
        return value
    if isinstance(value, (dict, keras.initializers.Initializer)) or callable(value):
        return value
    raise TypeError(f"`{name}` must be a name, a number or a Keras initializer. Received: {name}={value!r}")


def get_initializer(value: object, *, activation: object = "linear", name: str = "initializer"):
    """A Keras initializer for `value` (see the module docstring)."""
    check_initializer(value, name)
    if isinstance(value, numbers.Real):
        return keras.initializers.RandomNormal(mean=0.0, stddev=float(value))
    if isinstance(value, str) and value in INITIALIZERS:
        value = INITIALIZERS.canonical(value)
        if value == "auto":
            value = default_initializer(activation)
    return keras.initializers.get(value)


def check_bias_initializer(value: object) -> object:
    """Validate a bias initializer (a number is a constant here, and "auto" is not allowed)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"`bias_initializer` must be finite. Received: bias_initializer={value!r}")
        return value
    if isinstance(value, str) and INITIALIZERS.lookup(value) == "auto":
        raise ValueError(
            "`bias_initializer` takes a name, a constant or a Keras initializer, not 'auto'. "
            f"Received: bias_initializer={value!r}"
        )
    return check_initializer(value, "bias_initializer")


def get_bias_initializer(value: object):
    """A Keras bias initializer; a number ``c`` means the constant ``c`` (e.g. 0.01 for ReLU)."""
    check_bias_initializer(value)
    if isinstance(value, numbers.Real):
        return keras.initializers.Constant(float(value))
    return keras.initializers.get(value)


@keras.saving.register_keras_serializable(package="keras_bn")
class Scaled(keras.initializers.Initializer):
    """`base`'s values times `factor` (Fixup's rescaled branch kernels).

    Example::

        init = Scaled(keras.initializers.HeNormal(), factor=9 ** -0.5)
    """

    def __init__(self, base, factor: float):
        self.base = keras.initializers.get(base)
        self.factor = float(factor)

    def __call__(self, shape, dtype=None):
        return self.base(shape, dtype=dtype) * self.factor

    def get_config(self):
        return {"base": keras.saving.serialize_keras_object(self.base), "factor": self.factor}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["base"]), config["factor"])
