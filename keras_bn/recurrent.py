"""Fast LayerNorm recurrent layers and `build_recurrent`, a sequence classifier builder.

`LayerNormLSTM`, `LayerNormGRU` and `LayerNormSimpleRNN` are ``keras.layers.RNN`` layers of
the LayerNorm cells of `keras_bn.recurrent_cells` (same equations, same weights, same
options), built like ``keras.layers.LSTM(units, ...)``. What makes them faster than
``keras.layers.RNN(LayerNormLSTMCell(units))``: the part of each step that does not depend on
the recurrence, the input projection ``W_x x_t`` (and, for the LSTM and GRU, its LayerNorm
and the bias), runs once for all time steps, one matmul and one LN over
``(batch, time, gates * units)``, before the time loop; only the recurrent half runs per step.
Dropout is the cells': one input mask per sequence (the same for every step, so applying it to
the whole sequence before the projection is the same thing) and one recurrent mask per
sequence, only with ``training=True``.

`build_recurrent` lays such layers (or Keras' own LSTM/GRU/SimpleRNN, which keep cuDNN on a
GPU) out as a Functional classifier, in the style of `keras_bn.build_dense`.

Usage::

    layer = keras_bn.LayerNormLSTM(64, return_sequences=True, dropout=0.1)
    model = keras_bn.build_recurrent((28, 28), 128, 10, cell="lstm", norm="layer")
"""

from __future__ import annotations

import keras
from keras import ops

from keras_bn import _keras_internals as internals
from keras_bn._validation import check_choice, check_float, check_int_list, check_positive_int
from keras_bn.builders import check_common, output_head
from keras_bn.initializers import check_bias_initializer, get_bias_initializer, get_initializer
from keras_bn.norms import check_norm_kwargs, resolve_norm
from keras_bn.recurrent_cells import (
    LayerNormGRUCell,
    LayerNormLSTMCell,
    LayerNormSimpleRNNCell,
    _check_bool,
    layer_norm,
)

__all__ = [
    "LayerNormGRU", "LayerNormGRUCell", "LayerNormLSTM", "LayerNormLSTMCell", "LayerNormSimpleRNN",
    "LayerNormSimpleRNNCell", "build_recurrent", "layer_norm",
]

CELL_TYPES = ("lstm", "gru", "simple")
RECURRENT_NORMS = ("none", "layer")
_CELL_OPTIONS = ("activation", "recurrent_activation", "use_bias", "kernel_initializer", "recurrent_initializer",
                 "bias_initializer", "gain_initializer", "dropout", "recurrent_dropout", "epsilon", "seed")


class _ProjectedRNN(keras.layers.RNN):
    """``keras.layers.RNN`` of one LayerNorm cell whose input half runs outside the time loop."""

    _cell_class = None
    _cell_options = _CELL_OPTIONS

    def __init__(self, units, *, return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, zero_output_for_mask=False, **kwargs):
        options = {name: kwargs.pop(name) for name in self._cell_options if name in kwargs}
        cell = self._cell_class(units, dtype=kwargs.get("dtype"), trainable=kwargs.get("trainable", True),
                                name=f"{self._cell_class.__name__[:-4].lower()}_cell", **options)
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state, go_backwards=go_backwards,
                         stateful=stateful, unroll=unroll, zero_output_for_mask=zero_output_for_mask, **kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=3)

    @property
    def units(self):
        return self.cell.units

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        steps = sequences.shape[1]
        # Time-major before the projection (a transpose of the narrow inputs, not of the
        # 4u-wide projection); a sequence of unknown length keeps the backend's batch-major loop.
        time_major = steps is not None
        sequences = self.cell._dropped_inputs(sequences, training)  # one mask per sequence
        if time_major:
            sequences = ops.transpose(sequences, (1, 0, 2))
            mask = None if mask is None else ops.transpose(mask, (1, 0))
        constants = self.cell.loop_constants()
        result = None
        if time_major and mask is None and not self.unroll:
            result = self.cell.run_sequence(constants, sequences, initial_state, go_backwards=self.go_backwards,
                                            return_sequences=self.return_sequences, training=training)
        if result is None:
            projected = self.cell.loop_inputs(sequences, constants)  # every step at once

            def step(inputs, states):
                return self.cell.loop_step(constants, inputs, states, training=training)

            result = internals.backend_rnn(
                step, projected, initial_state, go_backwards=self.go_backwards, mask=mask, unroll=self.unroll,
                input_length=steps, time_major=time_major, zero_output_for_mask=self.zero_output_for_mask,
                return_all_outputs=self.return_sequences,
            )
        last, outputs, states = result
        return last, ops.transpose(outputs, (1, 0, 2)) if time_major else outputs, states

    def get_config(self):
        config = super().get_config()
        del config["cell"]
        cell = self.cell.get_config()
        return {**config, "units": self.cell.units, **{name: cell[name] for name in self._cell_options}}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_bn")
class LayerNormLSTM(_ProjectedRNN):
    """LSTM layer with layer normalization (`LayerNormLSTMCell`), input projection out of the loop.

    Takes ``units``, every option of `LayerNormLSTMCell` and those of ``keras.layers.RNN``
    (`return_sequences`, `return_state`, `go_backwards`, `stateful`, `unroll`). ``.cell`` is
    the `LayerNormLSTMCell` that holds the weights.

    Example::

        x = keras_bn.LayerNormLSTM(64, return_sequences=True)(keras.Input((28, 28)))
    """

    _cell_class = LayerNormLSTMCell
    _cell_options = _CELL_OPTIONS + ("unit_forget_bias",)


@keras.saving.register_keras_serializable(package="keras_bn")
class LayerNormGRU(_ProjectedRNN):
    """GRU layer with layer normalization (`LayerNormGRUCell`), input projection out of the loop.

    Example::

        x = keras_bn.LayerNormGRU(64)(keras.Input((None, 8)))
    """

    _cell_class = LayerNormGRUCell


@keras.saving.register_keras_serializable(package="keras_bn")
class LayerNormSimpleRNN(_ProjectedRNN):
    """Fully connected RNN layer with layer normalization (`LayerNormSimpleRNNCell`); ``W_x x``
    of every step is computed before the loop (the LN itself needs the recurrent part).

    Example::

        x = keras_bn.LayerNormSimpleRNN(50)(keras.Input((None, 6)))
    """

    _cell_class = LayerNormSimpleRNNCell


_KERAS_LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple": keras.layers.SimpleRNN}
_LN_LAYERS = {"lstm": LayerNormLSTM, "gru": LayerNormGRU, "simple": LayerNormSimpleRNN}


def _check_sequence_shape(input_shape) -> tuple:
    """``(timesteps, features)``; timesteps may be None (any length)."""
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
        raise ValueError(
            "`input_shape` must be (timesteps, features), e.g. (28, 28) for images read row by row; "
            f"timesteps may be None. Received: input_shape={input_shape!r}"
        )
    steps, features = input_shape
    if steps is not None:
        check_positive_int("input_shape[0]", steps)
    return (steps, check_positive_int("input_shape[1]", features))


def build_recurrent(
    input_shape,
    units,
    num_classes: int,
    *,
    cell: str = "lstm",
    norm=None,
    bidirectional: bool = False,
    return_sequences: bool = False,
    unroll: bool = False,
    activation="tanh",
    initializer="glorot_uniform",
    recurrent_initializer="orthogonal",
    bias_initializer="zeros",
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    norm_kwargs: dict | None = None,
    output_activation: str | None = "softmax",
    name: str = "recurrent_net",
) -> keras.Model:
    """A sequence classifier: one recurrent layer per entry of `units`, then the classifier.

    Layers are named ``block1_lstm``, ``block2_lstm``, ... (``block1_bilstm`` when
    `bidirectional`), then ``logits`` and ``predictions`` as in `keras_bn.build_dense`. Every
    layer but the last returns its whole sequence; the last returns the final state, or with
    ``return_sequences=True`` every step, and the classifier is applied per step.

    Args:
        input_shape: ``(timesteps, features)``; timesteps may be None.
        units: hidden units of each recurrent layer, e.g. ``128`` or ``[64, 64]``.
        num_classes: outputs of the last Dense layer.
        cell: "lstm", "gru" or "simple".
        norm: None (Keras' own LSTM/GRU/SimpleRNN layer, cuDNN-eligible on a GPU) or "layer"
            (`LayerNormLSTM`, `LayerNormGRU`, `LayerNormSimpleRNN`).
        bidirectional: wrap each layer in ``keras.layers.Bidirectional`` (outputs concatenated).
        return_sequences: the last recurrent layer returns every step (a per-step classifier).
        unroll: unroll the time loop in the graph (faster for short, fixed-length sequences
            on a CPU; needs a fixed number of timesteps).
        activation: the cell's state activation (tanh).
        initializer, recurrent_initializer, bias_initializer: by name, or a number for a
            N(0, s^2) init, as the other builders (``"auto"`` picks from `activation`).
        dropout, recurrent_dropout: each cell's input and recurrent dropout rates.
        norm_kwargs: ``{"epsilon": ...}`` for the LN cells.
        output_activation: "softmax", "sigmoid" or None (logits).
        name: the model's name.

    Example::

        model = keras_bn.build_recurrent((None, 1), 50, 4, cell="simple", initializer=0.1,
                                         recurrent_initializer=0.1)
    """
    input_shape = _check_sequence_shape(input_shape)
    units = check_int_list("units", units)
    cell = check_choice("cell", cell, CELL_TYPES)
    norm = resolve_norm(norm)
    if norm in ("batch", "sync_batch"):
        raise ValueError(
            "`norm` must be None or 'layer' for a recurrent net: BatchNorm would need statistics per "
            "time step over the batch, which is what LayerNorm replaces in RNNs (Ba et al. 2016). "
            f"Received: norm={norm!r}"
        )
    norm = check_choice("norm", norm, RECURRENT_NORMS)
    for flag_name, flag in (("bidirectional", bidirectional), ("return_sequences", return_sequences), ("unroll", unroll)):
        _check_bool(flag_name, flag)
    if unroll and input_shape[0] is None:
        raise ValueError(
            "`unroll=True` needs a fixed number of timesteps; give input_shape=(timesteps, features). "
            f"Received: input_shape={input_shape!r}"
        )
    dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
    recurrent_dropout = check_float("recurrent_dropout", recurrent_dropout, low=0.0, high=1.0, high_inclusive=False)
    keras.activations.get(activation)
    get_initializer(initializer, activation=activation, name="initializer")
    get_initializer(recurrent_initializer, activation=activation, name="recurrent_initializer")
    check_bias_initializer(bias_initializer)
    if norm == "none" and norm_kwargs:
        raise ValueError(f"`norm_kwargs` needs norm='layer'. Received: norm=None, norm_kwargs={norm_kwargs!r}")
    ln_kwargs = check_norm_kwargs("layer", norm_kwargs) if norm == "layer" else {}
    if set(ln_kwargs) - {"epsilon"}:
        raise ValueError(
            f"`norm_kwargs` of the LayerNorm cells takes only 'epsilon' (their gains and shifts are "
            f"always learned). Received: norm_kwargs={norm_kwargs!r}"
        )
    num_classes = check_common(num_classes, output_activation, None, [])

    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    for i, width in enumerate(units, start=1):
        options = dict(
            activation=activation,
            kernel_initializer=get_initializer(initializer, activation=activation),
            recurrent_initializer=get_initializer(recurrent_initializer, activation=activation),
            bias_initializer=get_bias_initializer(bias_initializer),
            dropout=dropout, recurrent_dropout=recurrent_dropout,
        )
        sequences = return_sequences or i < len(units)
        layer_name = f"block{i}_{cell}"
        if norm == "layer":
            layer = _LN_LAYERS[cell](width, **options, **ln_kwargs, return_sequences=sequences, unroll=unroll,
                                     name=layer_name)
        else:
            layer = _KERAS_LAYERS[cell](width, **options, return_sequences=sequences, unroll=unroll, name=layer_name)
        if bidirectional:
            layer = keras.layers.Bidirectional(layer, name=f"block{i}_bi{cell}")
        x = layer(x)
    outputs = output_head(x, num_classes, output_activation)
    return keras.Model(inputs, outputs, name=name)
