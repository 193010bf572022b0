"""The LayerNorm LSTM's recurrent half with hand-written gradients: one step, or the whole loop.

In a time loop of small tensors (batch 32 x 128 units) every op costs about the same fixed
overhead, whatever its size, and so does every forward tensor the backward pass keeps (a
push and a pop per step). Autodiff of the step's two LayerNorms and four gates runs ~64
forward and ~110 backward ops per step in TensorFlow's loop; `fused_lstm_step` (one step,
``keras.ops.custom_gradient``: TensorFlow and JAX) ~45 and ~60, and `fused_lstm_sequence`
(TensorFlow: the whole loop, its backward a second loop written by hand) ~38 and ~45,
against ~31 and ~36 for Keras' LSTM. The equations are the paper's; two rewrites make them
cheaper:

- the recurrent projection comes from the row-centred kernel ``U' = U - rowmean(U)``, so
  ``a = h U'`` is centred already and its LN is ``a * rsqrt(mean(a^2) + eps)`` (the centring
  and its gradient run once per sequence, outside the loop);
- the four gate activations are one sigmoid over all ``4u`` pre-activations, the ``g``
  columns doubled beforehand (in the gains and the projected input), because
  ``tanh(x) = 2 sigmoid(2x) - 1``; its gradient is one elementwise product.

The cell uses them where `fused_step_applies` (tanh and sigmoid, float32, TensorFlow or JAX)
and autodiff of the plain equations elsewhere.

Usage::

    h, c = fused_lstm_step(epsilon)(p_scaled, h_in @ centred_kernel, c_tm1, gain_scaled, cell_gain, cell_shift)
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["fused_lstm_sequence", "fused_lstm_step", "fused_step_applies", "gate_scale"]


def fused_step_applies(cell) -> bool:
    """Whether `cell` (a `LayerNormLSTMCell`) can run `fused_lstm_step`: tanh and sigmoid
    activations, float32 compute, and a backend whose ``custom_gradient`` takes two outputs."""
    return (
        cell.activation is keras.activations.tanh
        and cell.recurrent_activation is keras.activations.sigmoid
        and cell.compute_dtype == "float32"
        and keras.backend.backend() in ("tensorflow", "jax")
    )


def gate_scale(units: int):
    """``[1]*2u + [2]*u + [1]*u``: doubles the ``g`` gate's columns (tanh through sigmoid)."""
    return ops.concatenate([ops.ones((2 * units,)), ops.full((units,), 2.0), ops.ones((units,))])


def _forward(p, a, c_tm1, g_h, g_c, b_c, epsilon):
    """``h, c`` and what the backward pass keeps."""
    rs_a = ops.rsqrt(ops.mean(ops.square(a), axis=-1, keepdims=True) + epsilon)
    a_hat = a * rs_a
    s = ops.sigmoid(p + a_hat * g_h)
    s_i, s_f, s_g, s_o = ops.split(s, 4, axis=-1)
    t_g = 2.0 * s_g - 1.0  # tanh of the g pre-activation
    c = s_f * c_tm1 + s_i * t_g
    d_c = c - ops.mean(c, axis=-1, keepdims=True)
    rs_c = ops.rsqrt(ops.mean(ops.square(d_c), axis=-1, keepdims=True) + epsilon)
    c_hat = d_c * rs_c
    t_c = ops.tanh(c_hat * g_c + b_c)
    return s_o * t_c, c, (s, t_g, c_tm1, c_hat, rs_c, t_c, a_hat, rs_a)


def _backward(saved, dh, dc, g_h, g_c):
    """From the gradients of ``h_t, c_t``: those of the (scaled) pre-activations ``dz``, of
    ``a``, of ``c_{t-1}``, and ``dn``, that of the cell LN's output (for its gain and shift)."""
    s, t_g, c_tm1, c_hat, rs_c, t_c, a_hat, rs_a = saved
    s_i, s_f, _, s_o = ops.split(s, 4, axis=-1)
    dn = dh * s_o * (1.0 - t_c * t_c)
    dc_hat = dn * g_c
    dc = dc + rs_c * (dc_hat - ops.mean(dc_hat, axis=-1, keepdims=True)
                      - c_hat * ops.mean(dc_hat * c_hat, axis=-1, keepdims=True))
    dz = ops.concatenate([dc * t_g, dc * c_tm1, 2.0 * dc * s_i, dh * t_c], axis=-1) * (s - s * s)
    da_hat = dz * g_h
    da = rs_a * (da_hat - a_hat * ops.mean(da_hat * a_hat, axis=-1, keepdims=True))
    return dz, da, dc * s_f, dn


def _upstream(upstream, like):
    """The output gradients as a list (TensorFlow passes one per output, JAX one tuple), zeros
    for outputs the loss does not use."""
    grads = upstream[0] if len(upstream) == 1 and isinstance(upstream[0], (tuple, list)) else upstream
    return [ops.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


def fused_lstm_step(epsilon: float):
    """``step(p, a, c_tm1, g_h, g_c, b_c) -> (h, c)`` with a hand-written gradient.

    `p` is the projected input plus bias and `g_h` the recurrent gain, both times
    `gate_scale`; `a` is ``h_{t-1} @ U'`` with the row-centred recurrent kernel ``U'``;
    `g_c`, `b_c` are the cell state's LN gain and shift.
    """

    @ops.custom_gradient
    def step(p, a, c_tm1, g_h, g_c, b_c):
        h, c, saved = _forward(p, a, c_tm1, g_h, g_c, b_c, epsilon)

        def grad(*upstream):
            dh, dc = _upstream(upstream, (h, c))
            dz, da, dc_tm1, dn = _backward(saved, dh, dc, g_h, g_c)
            c_hat, a_hat = saved[3], saved[6]
            return dz, da, dc_tm1, ops.sum(dz * a_hat, axis=0), ops.sum(dn * c_hat, axis=0), ops.sum(dn, axis=0)

        return (h, c), grad

    return step


def fused_lstm_sequence(epsilon: float, return_sequences: bool, recurrent_mask=None):
    """TensorFlow only: ``run(p, h0, c0, kernel, g_h, g_c, b_c) -> ([h_seq,] h_T, c_T)``, the
    whole time loop as one op group whose backward pass is a second loop written by hand.

    `p` is time-major ``(T, batch, 4u)`` with a static T (projected input plus bias, times
    `gate_scale`), so is ``h_seq``; `kernel` is the row-centred recurrent kernel and
    `recurrent_mask` the recurrent dropout mask or None. Why: TensorFlow's autodiff of a
    ``while_loop`` accumulates every weight's gradient inside the backward loop, with a push
    and a pop per kept tensor per step; here each step's tensors stay in TensorArrays read
    back in reverse, the backward loop carries only ``dh, dc``, and the weight gradients are
    one matmul or reduction over the whole sequence afterwards.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def run(p, h0, c0, kernel, g_h, g_c, b_c):
        steps = p.shape[0]
        inputs = tf.TensorArray(p.dtype, size=steps).unstack(p)

        def forward(t, h, c, h_seq, *kept):
            h_in = h if recurrent_mask is None else h * recurrent_mask
            h, c, saved = _forward(inputs.read(t), tf.matmul(h_in, kernel), c, g_h, g_c, b_c, epsilon)
            return (t + 1, h, c, h_seq.write(t, h), *[k.write(t, v) for k, v in zip(kept, saved)])

        arrays = [tf.TensorArray(p.dtype, size=steps, clear_after_read=False) for _ in range(9)]  # read twice
        _, h_last, c_last, h_seq, *kept = tf.while_loop(
            lambda t, *_: t < steps, forward, (tf.constant(0), h0, c0, *arrays), parallel_iterations=32)
        h_all = h_seq.stack()
        outputs = (h_all, h_last, c_last) if return_sequences else (h_last, c_last)

        def grad(*upstream):
            upstream = _upstream(upstream, outputs)
            dy = tf.TensorArray(p.dtype, size=steps).unstack(upstream[0]) if return_sequences else None

            def backward(i, dh, dc, dz_seq, dn_seq, da_seq):
                t = steps - 1 - i
                if dy is not None:
                    dh = dh + dy.read(t)
                dz, da, dc, dn = _backward([k.read(t) for k in kept], dh, dc, g_h, g_c)
                dh = tf.matmul(da, kernel, transpose_b=True)
                if recurrent_mask is not None:
                    dh = dh * recurrent_mask
                return i + 1, dh, dc, dz_seq.write(t, dz), dn_seq.write(t, dn), da_seq.write(t, da)

            arrays = [tf.TensorArray(p.dtype, size=steps) for _ in range(3)]
            _, dh0, dc0, dz, dn, da = tf.while_loop(
                lambda i, *_: i < steps, backward, (tf.constant(0), *upstream[-2:], *arrays), parallel_iterations=32)
            dz, dn, da = dz.stack(), dn.stack(), da.stack()
            c_hat, a_hat = kept[3].stack(), kept[6].stack()
            h_in = tf.concat([h0[None], h_all[:-1]], axis=0)
            if recurrent_mask is not None:
                h_in = h_in * recurrent_mask
            units = h0.shape[-1]
            d_kernel = tf.matmul(tf.reshape(h_in, (-1, units)), tf.reshape(da, (-1, 4 * units)), transpose_a=True)
            return (dz, dh0, dc0, d_kernel, tf.reduce_sum(dz * a_hat, axis=(0, 1)),
                    tf.reduce_sum(dn * c_hat, axis=(0, 1)), tf.reduce_sum(dn, axis=(0, 1)))

        return outputs, grad

    return run
