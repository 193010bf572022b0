"""The LayerNorm LSTM's recurrent step as one op group with a hand-written gradient.

In a time loop of small tensors (batch 32 x 128 units) every op costs about the same fixed
overhead, whatever its size, and so does every forward tensor the backward pass keeps (one
push per step, one pop). Autodiff of the step's two LayerNorms and four gates keeps ~23
tensors and runs ~110 ops per step in TensorFlow's backward loop; `fused_lstm_step` keeps 9
and runs ~35, with the same equations:

- the recurrent projection comes from the row-centred kernel ``U' = U - rowmean(U)``, so
  ``a = h U'`` is centred already and its LN is ``a * rsqrt(mean(a^2) + eps)`` (the centring
  and its gradient run once per sequence, outside the loop);
- the four gate activations are one sigmoid over all ``4u`` pre-activations, the ``g``
  columns doubled beforehand (in the gains and the projected input), because
  ``tanh(x) = 2 sigmoid(2x) - 1``; its gradient is one elementwise product.

Written with ``keras.ops`` and ``keras.ops.custom_gradient`` (TensorFlow and JAX); the
cell falls back to autodiff of the plain equations on other backends, other activations and
non-float32 compute dtypes (`fused_step_applies`).

Usage::

    h, c = fused_lstm_step(epsilon)(p_scaled, h_in @ centred_kernel, c_tm1, gain_scaled, cell_gain, cell_shift)
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["fused_lstm_step", "fused_step_applies", "gate_scale"]


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


def fused_lstm_step(epsilon: float):
    """``step(p, a, c_tm1, g_h, g_c, b_c) -> (h, c)`` with a hand-written gradient.

    `p` is the projected input plus bias and `g_h` the recurrent gain, both times
    `gate_scale`; `a` is ``h_{t-1} @ U'`` with the row-centred recurrent kernel ``U'``;
    `g_c`, `b_c` are the cell state's LN gain and shift.
    """

    @ops.custom_gradient
    def step(p, a, c_tm1, g_h, g_c, b_c):
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
        h = s_o * t_c

        def grad(*upstream):
            dh, dc = upstream[0] if len(upstream) == 1 else upstream  # JAX passes one tuple
            s_i, s_f, _, s_o = ops.split(s, 4, axis=-1)
            ds_o = dh * t_c
            dn = dh * s_o * (1.0 - t_c * t_c)
            dg_c = ops.sum(dn * c_hat, axis=0)
            db_c = ops.sum(dn, axis=0)
            dc_hat = dn * g_c
            dc = dc + rs_c * (dc_hat - ops.mean(dc_hat, axis=-1, keepdims=True)
                              - c_hat * ops.mean(dc_hat * c_hat, axis=-1, keepdims=True))
            ds = ops.concatenate([dc * t_g, dc * c_tm1, 2.0 * dc * s_i, ds_o], axis=-1)
            dz = ds * (s - s * s)
            da_hat = dz * g_h
            da = rs_a * (da_hat - a_hat * ops.mean(da_hat * a_hat, axis=-1, keepdims=True))
            return dz, da, dc * s_f, ops.sum(dz * a_hat, axis=0), dg_c, db_c

        return (h, c), grad

    return step
