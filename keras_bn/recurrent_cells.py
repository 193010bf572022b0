"""Layer-normalized recurrent cells (Ba, Kiros & Hinton 2016) for ``keras.layers.RNN``.

Keras 3 has no LayerNorm RNN cell (TensorFlow Addons' ``LayerNormLSTMCell`` is tf.keras only),
so keras-bn has three, written with ``keras.ops`` (any backend) and registered serializable
(``.keras`` files load with ``safe_mode=True`` and no ``custom_objects``). LN normalizes over
the features of each sample, so it behaves the same at any batch size and at every time step
(SEEDS §6); ``LN(a; g, b) = g * (a - mean(a)) / sqrt(var(a) + epsilon) + b`` over the last axis.

- `LayerNormLSTMCell`, the paper's eq. (20)-(22), gates in Keras' order (i, f, g, o)::

      [i f g o] = LN(W_x x_t; g_x) + LN(W_h h_{t-1}; g_h) + b
      c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
      h_t = sigmoid(o) * tanh(LN(c_t; g_c, b_c))

  Each projection is normalized over all 4*units of its gates together, as in the paper; the
  paper's shifts of the two projections add up with ``b`` and are folded into it.
- `LayerNormGRUCell`: the same two separate normalizations of the (z, r, n) projections; the
  recurrent one keeps its own shift ``b_h`` because the reset gate multiplies it (as Keras'
  ``reset_after=True`` GRU keeps a recurrent bias)::

      [xz xr xn] = LN(W_x x_t; g_x) + b        [hz hr hn] = LN(W_h h_{t-1}; g_h, b_h)
      z = sigmoid(xz + hz)   r = sigmoid(xr + hr)   n = tanh(xn + r * hn)
      h_t = z * h_{t-1} + (1 - z) * n           (Keras' convention for z)

- `LayerNormSimpleRNNCell`, the paper's eq. (4): the summed inputs normalized together,
  ``h_t = tanh(LN(W_x x_t + W_h h_{t-1}; g) + b)``.

Options as Keras' own cells: `activation`, `recurrent_activation`, `use_bias`, initializers
by name (recurrent kernel orthogonal by default, gains ``"ones"``), `unit_forget_bias` (LSTM),
`dropout` on the inputs and `recurrent_dropout` on the recurrent state (one mask per sequence,
only with ``training=True``), `seed`, and `epsilon`.

Each cell's step is split in two public halves: ``project_inputs(x)``, the part that does not
depend on the recurrence (input dropout, ``W_x x`` and, for the LSTM and GRU, its LN and the
bias), which accepts one step ``(batch, features)`` or a whole sequence ``(batch, time,
features)``, and ``recurrent_step(projected, states)``, the rest. ``call`` is the two in a row;
`keras_bn.LayerNormLSTM` (in `keras_bn.recurrent`) runs the first once over all time steps.

Usage::

    layer = keras.layers.RNN(keras_bn.LayerNormLSTMCell(64), return_sequences=True)
"""

from __future__ import annotations

import keras
from keras import ops

from keras_bn import _keras_internals as internals
from keras_bn._lstm_step import fused_lstm_sequence, fused_lstm_step, fused_step_applies, gate_scale
from keras_bn._validation import check_float, check_positive_int

__all__ = ["LayerNormGRUCell", "LayerNormLSTMCell", "LayerNormSimpleRNNCell", "layer_norm"]

_DropoutRNNCell = internals.dropout_rnn_cell_base()


def layer_norm(x, gain, shift=None, epsilon: float = 1e-3):
    """``gain * (x - mean) / sqrt(var + epsilon) + shift`` over the last axis of `x`."""
    mean, variance = ops.moments(x, axes=[-1], keepdims=True)
    y = (x - mean) * ops.rsqrt(variance + epsilon) * gain
    return y if shift is None else y + shift


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value


class _LayerNormCell(keras.layers.Layer, _DropoutRNNCell):
    """What the three cells share: options, weights of the two projections, dropout, config."""

    _gates = 1  # projections per unit (4 for LSTM, 3 for GRU)

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        gain_initializer="ones",
        dropout=0.0,
        recurrent_dropout=0.0,
        epsilon=1e-3,
        seed=None,
        **kwargs,
    ):
        units = check_positive_int("units", units)
        dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
        recurrent_dropout = check_float("recurrent_dropout", recurrent_dropout, low=0.0, high=1.0, high_inclusive=False)
        epsilon = check_float("epsilon", epsilon, low=0.0, low_inclusive=False)
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.use_bias = _check_bool("use_bias", use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.gain_initializer = keras.initializers.get(gain_initializer)
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.epsilon = epsilon
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed=seed)
        self.state_size = units
        self.output_size = units

    def _bias_initializer(self):
        return self.bias_initializer

    def build(self, input_shape):
        width = self.units * self._gates
        self.kernel = self.add_weight(shape=(input_shape[-1], width), name="kernel", initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, width), name="recurrent_kernel", initializer=self.recurrent_initializer
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(shape=(width,), name="bias", initializer=self._bias_initializer())
        self._build_norms(width)

    def _build_norms(self, width: int) -> None:
        """The gains (and shifts) of the layer normalizations."""
        self.input_gain = self.add_weight(shape=(width,), name="input_gain", initializer=self.gain_initializer)
        self.recurrent_gain = self.add_weight(shape=(width,), name="recurrent_gain", initializer=self.gain_initializer)

    def _dropped_inputs(self, inputs, training):
        """`inputs` (one step or a whole sequence) times this sequence's input dropout mask."""
        if not (training and self.dropout > 0):
            return inputs
        if len(inputs.shape) == 2:
            return inputs * self.get_dropout_mask(inputs)
        return inputs * ops.expand_dims(self.get_dropout_mask(inputs[:, 0, :]), 1)  # one mask for all steps

    def _dropped_state(self, h_tm1, training):
        if training and self.recurrent_dropout > 0:
            return h_tm1 * self.get_recurrent_dropout_mask(h_tm1)
        return h_tm1

    def call(self, inputs, states, training=False):
        return self.recurrent_step(self.project_inputs(inputs, training=training), states, training=training)

    def _norm(self, x, gain, shift=None):
        return layer_norm(x, gain, shift, self.epsilon)

    # What a time loop runs (`keras_bn.LayerNormLSTM` & co.): constants computed once per
    # sequence, the inputs of every step at once, then one step per time step.
    def loop_constants(self):
        """Tensors every step needs, computed once per sequence (before the time loop)."""
        return None

    def loop_inputs(self, inputs, constants, training=False):
        """What the loop reads at each step, for one step or a whole sequence."""
        return self.project_inputs(inputs, training=training)

    def loop_step(self, constants, projected, states, training=False):
        """One step from `loop_inputs` of x_t: ``output, new_states``."""
        return self.recurrent_step(projected, states, training=training)

    def run_sequence(self, constants, sequences, initial_state, *, go_backwards, return_sequences, training=False):
        """The whole loop over time-major `sequences` (input dropout applied) in one op group:
        ``last, outputs, states`` as the backend's ``rnn``; None where the cell has none."""
        return None

    def _normed_projection(self, inputs, gain):
        """``LN(inputs @ kernel; gain)``, for one step or, faster, for a whole sequence.

        For a float32 sequence it uses that the mean of ``x W`` over its columns is ``x`` times
        the row means of ``W``: with the centred kernel ``W'`` the projection is centred already,
        its variance is the quadratic form ``x (W' W'^T / n) x^T`` and the gain goes into ``W'``,
        so the ``(batch * time, n)`` tensor is written once instead of passing through the
        moments' elementwise ops (about a tenth of a 128-unit LN-LSTM's training step on CPU).
        """
        if len(inputs.shape) != 3 or self.compute_dtype != "float32":
            return self._norm(ops.matmul(inputs, self.kernel), gain)
        batch, steps, features = ops.shape(inputs)
        flat = ops.reshape(inputs, (-1, features))
        width = self.kernel.shape[-1]
        centred = self.kernel - ops.mean(self.kernel, axis=1, keepdims=True)
        quadratic_form = ops.matmul(centred, ops.transpose(centred)) / width
        scaled = ops.matmul(flat, centred * gain)  # two matmuls: one of both and a split copies more
        variance = ops.maximum(ops.sum(flat * ops.matmul(flat, quadratic_form), axis=-1, keepdims=True), 0.0)
        return ops.reshape(scaled * ops.rsqrt(variance + self.epsilon), (batch, steps, width))

    def get_config(self):
        config = {
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "gain_initializer": keras.initializers.serialize(self.gain_initializer),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "epsilon": self.epsilon,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}

    def get_initial_state(self, batch_size=None):
        sizes = self.state_size if isinstance(self.state_size, (list, tuple)) else [self.state_size]
        return [ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in sizes]


@keras.saving.register_keras_serializable(package="keras_bn")
class LayerNormLSTMCell(_LayerNormCell):
    """LSTM cell with layer normalization (Ba et al. 2016, eq. 20-22), for ``keras.layers.RNN``.

    Weights: ``kernel`` (input_dim, 4u), ``recurrent_kernel`` (u, 4u), ``bias`` (4u, forget
    part 1 with `unit_forget_bias`), ``input_gain``/``recurrent_gain`` (4u), and
    ``cell_gain``/``cell_shift`` (u) of the cell state's normalization. States ``[h, c]``.

    Example::

        rnn = keras.layers.RNN(LayerNormLSTMCell(32, dropout=0.1))
    """

    _gates = 4

    def __init__(self, units, *, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = _check_bool("unit_forget_bias", unit_forget_bias)
        self.state_size = [self.units, self.units]

    def _bias_initializer(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        units, base = self.units, self.bias_initializer

        def forget_one(shape, dtype=None):
            return ops.concatenate([
                base((units,), dtype=dtype), ops.ones((units,), dtype=dtype), base((2 * units,), dtype=dtype),
            ])

        return forget_one

    def _build_norms(self, width):
        super()._build_norms(width)
        self.cell_gain = self.add_weight(shape=(self.units,), name="cell_gain", initializer=self.gain_initializer)
        self.cell_shift = self.add_weight(shape=(self.units,), name="cell_shift", initializer="zeros")

    def project_inputs(self, inputs, training=False):
        """``LN(W_x x; g_x) + b`` of one step or of every step of a sequence (last axis 4u)."""
        return self._projection(inputs, None, training)

    def _projection(self, inputs, scale, training):
        gain, bias = self.input_gain, self.bias
        if scale is not None:
            gain, bias = gain * scale, None if bias is None else bias * scale
        z = self._normed_projection(self._dropped_inputs(inputs, training), gain)
        return z if bias is None else z + bias

    def recurrent_step(self, projected, states, training=False):
        """The step from ``project_inputs`` of x_t and ``[h_{t-1}, c_{t-1}]``: ``h_t, [h_t, c_t]``."""
        constants = self.loop_constants()
        if constants["scale"] is not None:
            projected = projected * constants["scale"]
        return self.loop_step(constants, projected, states, training=training)

    def call(self, inputs, states, training=False):
        constants = self.loop_constants()
        return self.loop_step(constants, self.loop_inputs(inputs, constants, training=training), states,
                              training=training)

    def loop_constants(self):
        """The row-centred recurrent kernel (``h U'`` is centred, so its LN needs no mean) and,
        for the fused step (`keras_bn._lstm_step`), the gains with the g gate doubled."""
        kernel = ops.convert_to_tensor(self.recurrent_kernel)
        constants = {"kernel": kernel - ops.mean(kernel, axis=1, keepdims=True), "scale": None}
        if fused_step_applies(self):
            scale = gate_scale(self.units)
            constants.update(scale=scale, gain=self.recurrent_gain * scale, step=fused_lstm_step(self.epsilon),
                             cell_gain=ops.copy(self.cell_gain), cell_shift=ops.copy(self.cell_shift))  # read once
        return constants

    def loop_inputs(self, inputs, constants, training=False):
        """``project_inputs``, with the g gate's columns doubled for the fused step."""
        return self._projection(inputs, constants["scale"], training)

    def run_sequence(self, constants, sequences, initial_state, *, go_backwards, return_sequences, training=False):
        """`keras_bn._lstm_step.fused_lstm_sequence` where the fused step applies, on TensorFlow."""
        if constants["scale"] is None or keras.backend.backend() != "tensorflow":
            return None
        projected = self.loop_inputs(ops.flip(sequences, axis=0) if go_backwards else sequences, constants)
        h0, c0 = initial_state[0], initial_state[1]
        mask = self.get_recurrent_dropout_mask(h0) if training and self.recurrent_dropout > 0 else None
        outputs = fused_lstm_sequence(self.epsilon, return_sequences, mask)(
            projected, h0, c0, constants["kernel"], constants["gain"], constants["cell_gain"], constants["cell_shift"])
        h, c = outputs[-2], outputs[-1]
        return h, outputs[0] if return_sequences else ops.expand_dims(h, 0), [h, c]

    def loop_step(self, constants, projected, states, training=False):
        h_tm1, c_tm1 = states[0], states[1]
        a = ops.matmul(self._dropped_state(h_tm1, training), constants["kernel"])
        if constants["scale"] is not None:
            h, c = constants["step"](projected, a, c_tm1, constants["gain"], constants["cell_gain"],
                                     constants["cell_shift"])
            return h, [h, c]
        z = projected + self._norm(a, self.recurrent_gain)
        i, f, g, o = ops.split(z, 4, axis=-1)
        c = self.recurrent_activation(f) * c_tm1 + self.recurrent_activation(i) * self.activation(g)
        h = self.recurrent_activation(o) * self.activation(self._norm(c, self.cell_gain, self.cell_shift))
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


@keras.saving.register_keras_serializable(package="keras_bn")
class LayerNormGRUCell(_LayerNormCell):
    """GRU cell with separate layer normalizations of the input and recurrent projections.

    Weights: ``kernel`` (input_dim, 3u), ``recurrent_kernel`` (u, 3u), ``bias`` (3u),
    ``input_gain``/``recurrent_gain`` (3u) and ``recurrent_shift`` (3u). Gates (z, r, n) in
    Keras' order; see the module docstring for the equations.

    Example::

        rnn = keras.layers.RNN(LayerNormGRUCell(32), return_sequences=True)
    """

    _gates = 3

    def _build_norms(self, width):
        super()._build_norms(width)
        self.recurrent_shift = self.add_weight(shape=(width,), name="recurrent_shift", initializer="zeros")

    def project_inputs(self, inputs, training=False):
        """``LN(W_x x; g_x) + b`` of one step or of every step of a sequence (last axis 3u)."""
        x = self._normed_projection(self._dropped_inputs(inputs, training), self.input_gain)
        return x + self.bias if self.use_bias else x

    def recurrent_step(self, projected, states, training=False):
        """The step from ``project_inputs`` of x_t and ``h_{t-1}``: ``h_t, [h_t]``."""
        h_tm1 = states[0] if isinstance(states, (list, tuple)) else states
        h_in = self._dropped_state(h_tm1, training)
        x = projected
        r_h = self._norm(ops.matmul(h_in, self.recurrent_kernel), self.recurrent_gain, self.recurrent_shift)
        x_z, x_r, x_n = ops.split(x, 3, axis=-1)
        h_z, h_r, h_n = ops.split(r_h, 3, axis=-1)
        z = self.recurrent_activation(x_z + h_z)
        r = self.recurrent_activation(x_r + h_r)
        n = self.activation(x_n + r * h_n)
        h = z * h_tm1 + (1.0 - z) * n
        return h, [h]


@keras.saving.register_keras_serializable(package="keras_bn")
class LayerNormSimpleRNNCell(_LayerNormCell):
    """Fully connected RNN cell with layer normalization of the summed inputs (Ba et al., eq. 4).

    Weights: ``kernel`` (input_dim, u), ``recurrent_kernel`` (u, u), ``gain`` (u) and ``bias``
    (u, the normalization's shift). `recurrent_activation` is not used (there are no gates).

    Example::

        rnn = keras.layers.RNN(LayerNormSimpleRNNCell(50))
    """

    def _build_norms(self, width):
        self.gain = self.add_weight(shape=(width,), name="gain", initializer=self.gain_initializer)

    def project_inputs(self, inputs, training=False):
        """``W_x x`` of one step or of every step of a sequence (the LN needs the recurrent part)."""
        return ops.matmul(self._dropped_inputs(inputs, training), self.kernel)

    def recurrent_step(self, projected, states, training=False):
        """The step from ``project_inputs`` of x_t and ``h_{t-1}``: ``h_t, [h_t]``."""
        h_tm1 = states[0] if isinstance(states, (list, tuple)) else states
        a = projected + ops.matmul(self._dropped_state(h_tm1, training), self.recurrent_kernel)
        h = self.activation(self._norm(a, self.gain, self.bias))
        return h, [h]
