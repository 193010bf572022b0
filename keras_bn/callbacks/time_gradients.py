"""TimeGradients: ||dL/dh_t|| for every time step t of each recurrent layer, on a probe batch.

Vanishing and exploding gradients in an RNN are a matter of time, not of depth: the loss
gradient with respect to the hidden state h_t shrinks (or grows) as t moves away from where
the loss is taken (Pascanu, Mikolov & Bengio 2013, Fig. 1). Every `every` optimizer steps and
at each epoch end, this callback runs the model on the probe ``(x, y)`` in inference mode,
**unrolls the layer's own cell** step by step in Python over the layer's input sequence (so
every h_t is a tensor of its own), finishes the forward pass with the rest of the model and
the compiled loss (``model.compute_loss``, the batch mean), and takes the gradient of that
loss with respect to each h_t. ``||dL/dh_t||`` is the L2 norm of that (batch, units)
gradient: the *total* derivative, through the output at t and through every later step.

**Covered layers:** ``keras.layers.RNN`` and its subclasses with one cell (``LSTM``, ``GRU``,
``SimpleRNN``, ``keras_bn.LayerNormLSTM``, ``RNN(keras_bn.LayerNormLSTMCell(...))`` etc.), and
``Bidirectional`` around
one of them (both directions, tagged ``forward`` / ``backward``), in the top level of a
Functional or Sequential model (a layer called twice: its first call). Refused, with a
message saying why: stacked cells, ``stateful``, ``return_state``, a Bidirectional with
``merge_mode=None``, a model with several outputs, a layer with a Masking layer or
``mask_zero`` Embedding upstream (the unroll applies no mask), a layer whose downstream part
needs another input; and a layer whose unrolled output does not match the layer's own output
on the probe (checked at the first read) is left out with a warning.

t counts the steps in the order the layer processes them, from 1 to T (for
``go_backwards=True`` and the backward half of a Bidirectional, t = 1 is the last input
position), so ``first`` is the step farthest from a loss taken at the end.

Tags (train run, optimizer step; ``<dir>`` is ``forward``/``backward`` for a Bidirectional):

========================================= ======= =============================================
``time_grad/<layer>[/<dir>]/first``       scalar  ||dL/dh_1||
``time_grad/<layer>[/<dir>]/last``        scalar  ||dL/dh_T||
``time_grad/<layer>[/<dir>]/ratio``       scalar  first / last (<< 1: vanishing through time)
``figures/time_gradients``                image   ||dL/dh_t|| against t, log y, every layer
========================================= ======= =============================================

Every read is also kept in `history` and appended to ``<log_dir>/time_gradients.csv``
(``step,layer,t,norm``); `table()` formats the latest read.

Usage::

    cb = keras_bn.callbacks.TimeGradients("logs/rnn", probe=(x_val[:64], y_val[:64]), every=100)
    model.fit(x, y, epochs=3, callbacks=[cb])
"""

from __future__ import annotations

import os

import numpy as np

import keras

from keras_bn import _warnings
from keras_bn.callbacks._base import DiagnosticCallback
from keras_bn.callbacks._writer import RunWriters

__all__ = ["TimeGradients", "recurrent_layers"]

MERGE_MODES = ("concat", "sum", "ave", "mul")
# Unrolled output vs the layer's own: float32 round-off of a few hundred steps stays far below.
OUTPUT_TOLERANCE = 1e-4


def recurrent_layers(model: keras.Model) -> list[str]:
    """Names of the top-level layers of `model` that `TimeGradients` can cover."""
    return [layer.name for layer in model.layers if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))]


def _refusal(layer) -> str | None:
    """Why `layer` cannot be unrolled here, or None."""
    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode not in MERGE_MODES:
            return f"its merge_mode={layer.merge_mode!r} returns two outputs; use one of {MERGE_MODES}"
        if layer.return_state:
            return "it returns its states (return_state=True)"
        return _refusal(layer.forward_layer) or _refusal(layer.backward_layer)
    if not isinstance(layer, keras.layers.RNN):
        return (f"it is a {type(layer).__name__}, not a keras.layers.RNN (LSTM, GRU, SimpleRNN, RNN(cell)) "
                "or a Bidirectional around one")
    if isinstance(layer.cell, keras.layers.StackedRNNCells):
        return "its cell is a StackedRNNCells; use one RNN layer per cell"
    if layer.stateful:
        return "it is stateful (its state carries over between batches)"
    if layer.return_state:
        return "it returns its states (return_state=True)"
    return None


def _mask_refusal(head: keras.Model) -> str | None:
    """Why the input of a layer may carry a mask (which the unroll would not apply), or None.

    Conservative: any Masking layer or ``mask_zero`` Embedding upstream counts."""
    for upstream in head.layers:
        if isinstance(upstream, keras.layers.Masking) or getattr(upstream, "mask_zero", False):
            return (f"its input may carry a mask from {upstream.name!r} (Masking / Embedding(mask_zero=True)), "
                    "which the step-by-step unroll does not apply")
    return None


def _directions(layer) -> list[tuple[str, keras.layers.RNN]]:
    if isinstance(layer, keras.layers.Bidirectional):
        return [("forward", layer.forward_layer), ("backward", layer.backward_layer)]
    return [("", layer)]


def unroll(rnn: keras.layers.RNN, sequence, watch=None):
    """Run `rnn`'s cell over `sequence` (batch, time, features) step by step, in inference mode;
    `watch(h)` is called on each hidden state (a gradient tape's ``watch``).

    Returns ``(hidden, output)``: the list of the T hidden-state tensors in processing order,
    and the layer's output (the stacked sequence, or the last state).
    """
    ops = keras.ops
    if rnn.go_backwards:
        sequence = ops.flip(sequence, axis=1)
    states = rnn.get_initial_state(ops.shape(sequence)[0])
    hidden = []
    for t in range(sequence.shape[1]):
        output, states = rnn.cell(sequence[:, t], states, training=False)
        states = list(states) if isinstance(states, (list, tuple)) else [states]
        if states[0] is not output:
            raise ValueError(f"the cell of {rnn.name!r} returns an output that is not its first state")
        if watch is not None:
            watch(output)
        hidden.append(output)
    return hidden, (ops.stack(hidden, axis=1) if rnn.return_sequences else hidden[-1])


def merged_output(layer, outputs: list):
    """`layer`'s output from its directions' outputs (Bidirectional's merge, else the one)."""
    if not isinstance(layer, keras.layers.Bidirectional):
        return outputs[0]
    forward, backward = outputs
    if layer.return_sequences:
        backward = keras.ops.flip(backward, axis=1)
    if layer.merge_mode == "concat":
        return keras.ops.concatenate([forward, backward], axis=-1)
    if layer.merge_mode == "sum":
        return forward + backward
    if layer.merge_mode == "ave":
        return (forward + backward) / 2
    return forward * backward


def time_gradient_norms(model, layer, head, tail, x, y) -> tuple[list[np.ndarray], np.ndarray]:
    """``||dL/dh_t||`` per direction of `layer`, and the unrolled layer output (the one
    TensorFlow-specific function here: the gradient is taken with ``tf.GradientTape``)."""
    import tensorflow as tf

    sequence = head(x, training=False)
    with tf.GradientTape() as tape:
        unrolled = [unroll(rnn, sequence, tape.watch) for _, rnn in _directions(layer)]
        output = merged_output(layer, [out for _, out in unrolled])
        y_pred = tail(output, training=False)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
    hidden = [h for states, _ in unrolled for h in states]
    grads = tape.gradient(loss, hidden)
    norms = np.array([float(tf.norm(g)) if g is not None else 0.0 for g in grads])
    steps = len(unrolled[0][0])
    return [norms[i * steps:(i + 1) * steps] for i in range(len(unrolled))], keras.ops.convert_to_numpy(output)


class TimeGradients(DiagnosticCallback):
    """Logs ``||dL/dh_t||`` for t = 1..T of each recurrent layer on the probe (module docstring).

    Args:
        log_dir: the run directory (writes to ``<log_dir>/train``).
        probe: ``(x, y)``, a small batch of inputs and targets, e.g. ``(x_val[:64], y_val[:64])``.
        every: read every this many optimizer steps (and at each epoch end).
        layers: names of the layers to cover (None: every covered layer; see `recurrent_layers`).
        figures: write the ``figures/time_gradients`` image (epoch end, at most every `figure_secs`).
        writers: shared `RunWriters` (the preset's); None makes its own.

    Example::

        model.fit(x, y, callbacks=[keras_bn.callbacks.TimeGradients("logs/rnn", (x[:32], y[:32]), every=50)])
    """

    def __init__(self, log_dir, probe, every: int = 100, *, layers=None, figures: bool = True,
                 figure_secs: float = 60.0, writers: RunWriters | None = None):
        super().__init__(log_dir, every, figures=figures, figure_secs=figure_secs, writers=writers)
        if not (isinstance(probe, (list, tuple)) and len(probe) == 2):
            raise TypeError(
                "`probe` must be a pair (x, y) of inputs and targets, since the gradient needs the loss. "
                f"Received: probe of type {type(probe).__name__}"
            )
        self.probe = (np.asarray(probe[0]), np.asarray(probe[1]))
        if len(self.probe[0]) == 0 or len(self.probe[0]) != len(self.probe[1]):
            raise ValueError(
                f"`probe` x and y must hold the same number (>= 1) of samples. "
                f"Received: probe shapes={self.probe[0].shape}, {self.probe[1].shape}"
            )
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
            raise TypeError(f"`layers` must be a list of layer names or None. Received: layers={layers!r}")
        self.layers = None if layers is None else list(layers)
        self.history: list[tuple[int, dict[str, np.ndarray]]] = []
        self._plans = None

    # --- set-up -------------------------------------------------------------------------
    def _attach(self) -> None:
        if self._plans is None or self._plans[0] is not self.model:
            self._plans = (self.model, self._plan())
        self.writers.add_charts({"||dL/dh_t|| first / last": r"time_grad/.*/ratio",
                                 "||dL/dh_1|| (first step)": r"time_grad/.*/first",
                                 "||dL/dh_T|| (last step)": r"time_grad/.*/last"})

    def _plan(self) -> list:
        """``[(layer, head, tail)]`` for every covered layer; ValueError for a bad choice."""
        model = self.model
        try:
            model_inputs = model.inputs
        except (AttributeError, ValueError):
            model_inputs = None
        if not model_inputs:
            raise ValueError(
                f"TimeGradients needs a Functional or Sequential model (it cuts the graph at each "
                f"recurrent layer); {model.name!r} has no symbolic inputs (a subclassed model)."
            )
        if len(model.outputs) != 1:
            # compute_loss would also update the per-output loss metrics of the running epoch
            raise ValueError(
                f"TimeGradients supports models with one output; {model.name!r} has {len(model.outputs)}."
            )
        if getattr(model, "loss", None) is None:
            raise ValueError(
                f"TimeGradients needs the loss: compile {model.name!r} with `loss=` before fit."
            )
        names = self.layers if self.layers is not None else recurrent_layers(model)
        if not names:
            raise ValueError(
                f"TimeGradients found no recurrent layer in {model.name!r}: it covers keras.layers.RNN "
                "(LSTM, GRU, SimpleRNN, RNN(cell)) and Bidirectional layers in the model's top level."
            )
        plans = []
        for name in names:
            try:
                layer = model.get_layer(name)
            except ValueError:
                raise ValueError(
                    f"`layers` names a layer {name!r} that {model.name!r} does not have. "
                    f"Recurrent layers: {recurrent_layers(model)}. Received: layers={self.layers!r}"
                ) from None
            why = _refusal(layer)
            head = keras.Model(model_inputs[0] if len(model_inputs) == 1 else model_inputs, layer.input)
            if why is None:
                why = _mask_refusal(head)
            tail = None
            if why is None:
                try:
                    tail = keras.Model(layer.output, model.outputs)
                except Exception as error:  # noqa: BLE001  reported as a refusal
                    why = f"the model after it needs more than its output ({error})"
            if why is not None:
                raise ValueError(f"TimeGradients cannot unroll layer {name!r}: {why}.")
            plans.append([name, layer, head, tail, None])
        return plans

    # --- reads --------------------------------------------------------------------------
    def read(self) -> dict[str, np.ndarray]:
        """``{"<layer>[/<dir>]": norms over t}`` on the probe, now (layers whose unroll did
        not reproduce their output are left out, with a warning, once)."""
        x, y = self.probe
        result = {}
        for plan in self._plans[1]:
            name, layer, head, tail, verified = plan
            if verified is False:
                continue
            norms, output = time_gradient_norms(self.model, layer, head, tail, x, y)
            if verified is None:
                expected = keras.ops.convert_to_numpy(layer(head(x, training=False), training=False))
                error = float(np.max(np.abs(expected - output)))
                plan[4] = verified = error <= OUTPUT_TOLERANCE * (1.0 + float(np.max(np.abs(expected))))
                if not verified:
                    _warnings.warn(
                        f"keras_bn TimeGradients: the unrolled cell of {name!r} does not reproduce the "
                        f"layer's output (max difference {error:.3g}); its time gradients are not logged.",
                        RuntimeWarning,
                    )
                    continue
            for (direction, _), values in zip(_directions(layer), norms):
                result[f"{name}/{direction}" if direction else name] = values
        return result

    def _log_step(self, step: int) -> None:
        norms = self.read()
        self.history.append((step, norms))
        with self.writers.writing("train", step) as write:
            for key, values in norms.items():
                write.scalar(f"time_grad/{key}/first", values[0])
                write.scalar(f"time_grad/{key}/last", values[-1])
                write.scalar(f"time_grad/{key}/ratio", values[0] / values[-1] if values[-1] > 0 else float("nan"))
        if getattr(self.writers, "is_chief", True):
            self._append_csv(step, norms)

    def _append_csv(self, step: int, norms: dict) -> None:
        os.makedirs(self.writers.log_dir, exist_ok=True)
        path = os.path.join(self.writers.log_dir, "time_gradients.csv")
        new = not os.path.exists(path)
        with open(path, "a", encoding="utf-8") as handle:
            if new:
                handle.write("step,layer,t,norm\n")
            for key, values in norms.items():
                handle.writelines(f"{step},{key},{t},{value:.6g}\n" for t, value in enumerate(values, start=1))

    def table(self, points: int = 8) -> str:
        """The latest read as a table: one row per sampled t, one column per layer."""
        from keras_bn._tables import format_table

        if not self.history:
            return "TimeGradients: no read yet"
        step, norms = self.history[-1]
        steps = max(len(v) for v in norms.values())
        rows = [[t] + [float(v[t - 1]) for v in norms.values()]
                for t in sorted({int(round(t)) for t in np.linspace(1, steps, min(points, steps))})]
        return f"||dL/dh_t|| at step {step}\n" + format_table(["t", *norms], rows)

    def _draw(self, step: int) -> None:
        from keras_bn.callbacks._figure_process import draw_png

        if not self.history:
            return
        logged_step, norms = self.history[-1]
        image = draw_png("time_gradient_chart", norms, title=f"step {logged_step}")
        with self.writers.writing("train", logged_step) as write:
            write.image("figures/time_gradients", image)

    def get_config(self) -> dict:
        return {**super().get_config(), "layers": self.layers}
