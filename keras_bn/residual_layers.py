"""The parameter-free and scalar layers of `build_resnet`, serializable without a Lambda.

- `ZeroPadShortcut`: the paper's "option A" identity shortcut (He et al. 2015, §4.2): take
  every `strides`-th pixel and pad the channels with zeros up to `filters`. No parameters, so
  a residual net and its plain twin have the same parameter count.
- `ScalarBias` and `ScalarScale`: one learned scalar added / multiplied (Fixup, Zhang et al.
  2019, which replaces normalization by them).

Usage::

    shortcut = keras_bn.ZeroPadShortcut(filters=32, strides=2)(x)   # (N, 16, 16, 16) -> (N, 8, 8, 32)
"""

from __future__ import annotations

import keras

from keras_bn._validation import check_choice, check_float, check_positive_int

__all__ = ["ScalarBias", "ScalarScale", "ZeroPadShortcut"]

DATA_FORMATS = ("channels_last", "channels_first")


@keras.saving.register_keras_serializable(package="keras_bn")
class ZeroPadShortcut(keras.layers.Layer):
    """Identity shortcut with stride subsampling and zero-padded extra channels ("option A").

    Args:
        filters: output channels (>= the input channels; the new ones are zeros, appended).
        strides: keep every `strides`-th row and column (1 keeps them all).
        data_format: "channels_last" or "channels_first".

    Example::

        y = keras_bn.ZeroPadShortcut(64, strides=2)(x)
    """

    def __init__(self, filters: int, strides: int = 1, data_format: str = "channels_last", **kwargs):
        super().__init__(**kwargs)
        self.filters = check_positive_int("filters", filters)
        self.strides = check_positive_int("strides", strides)
        self.data_format = check_choice("data_format", data_format, DATA_FORMATS)

    def _channel_axis(self) -> int:
        return 1 if self.data_format == "channels_first" else -1

    def build(self, input_shape):
        channels = input_shape[self._channel_axis()]
        if channels is not None and channels > self.filters:
            raise ValueError(
                f"ZeroPadShortcut can only add channels: its input has {channels}, more than "
                f"`filters`. Use a projection shortcut to reduce channels. Received: filters={self.filters}"
            )
        super().build(input_shape)

    def call(self, inputs):
        s = self.strides
        rank = len(inputs.shape)
        if s > 1:
            spatial = (slice(None, None, s),) * (rank - 2)
            index = (slice(None), slice(None), *spatial) if self.data_format == "channels_first" else (
                slice(None), *spatial, slice(None))
            inputs = inputs[index]
        extra = self.filters - inputs.shape[self._channel_axis()]
        if extra == 0:
            return inputs
        pad = [[0, 0]] * rank
        pad[self._channel_axis() % rank] = [0, extra]
        return keras.ops.pad(inputs, pad)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        spatial = range(2, len(shape)) if self.data_format == "channels_first" else range(1, len(shape) - 1)
        for axis in spatial:
            if shape[axis] is not None:
                shape[axis] = -(-shape[axis] // self.strides)
        shape[self._channel_axis()] = self.filters
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "data_format": self.data_format}


class _Scalar(keras.layers.Layer):
    _default = 0.0

    def __init__(self, initial_value: float | None = None, **kwargs):
        super().__init__(**kwargs)
        value = self._default if initial_value is None else initial_value
        self.initial_value = check_float("initial_value", value)

    def build(self, input_shape):
        self.value = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.initial_value), name="value")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "initial_value": self.initial_value}


@keras.saving.register_keras_serializable(package="keras_bn")
class ScalarBias(_Scalar):
    """``x + b`` with one learned scalar `b` (starts at `initial_value`, default 0).

    Example::

        y = keras_bn.ScalarBias(name="block1_bias1a")(x)
    """

    def call(self, inputs):
        return inputs + keras.ops.cast(self.value, inputs.dtype)


@keras.saving.register_keras_serializable(package="keras_bn")
class ScalarScale(_Scalar):
    """``x * m`` with one learned scalar `m` (starts at `initial_value`, default 1).

    Example::

        y = keras_bn.ScalarScale(name="block1_scale")(x)
    """

    _default = 1.0

    def call(self, inputs):
        return inputs * keras.ops.cast(self.value, inputs.dtype)
