"""TimeGradients: ||dL/dh_t|| equals a GradientTape over a hand-written unroll; tags, refusals."""

import numpy as np
import pytest
import tensorflow as tf

import keras

import keras_bn
from keras_bn.callbacks.time_gradients import TimeGradients, recurrent_layers
from tests._events import scalar_series, tag_step_counts

B, T, F, U, C = 4, 7, 3, 5, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, F)).astype("float32")
    y = rng.integers(0, C, size=B).astype("int32")
    return x, y


def _ce(y, logits):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


def test_simple_rnn_matches_tape_over_hand_unroll():
    x, y = _data()
    inputs = keras.Input((T, F))
    h = keras.layers.SimpleRNN(U, name="rnn")(inputs)
    logits = keras.layers.Dense(C, name="head")(h)
    model = keras.Model(inputs, logits)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kernel, recurrent, bias = [tf.constant(w) for w in model.get_layer("rnn").get_weights()]
    w_head, b_head = [tf.constant(w) for w in model.get_layer("head").get_weights()]
    with tf.GradientTape() as tape:
        h = tf.zeros((B, U))
        states = []
        for t in range(T):
            h = tf.tanh(tf.constant(x[:, t]) @ kernel + h @ recurrent + bias)
            tape.watch(h)
            states.append(h)
        loss = _ce(y, h @ w_head + b_head)
    expected = np.array([float(tf.norm(g)) for g in tape.gradient(loss, states)])

    cb = TimeGradients("unused", probe=(x, y))
    cb.set_model(model)
    cb._attach()
    got = cb.read()
    assert list(got) == ["rnn"]
    np.testing.assert_allclose(got["rnn"], expected, rtol=1e-5, atol=1e-8)
    assert expected[0] < expected[-1]  # a loss at the end: the last state gets the largest gradient


def test_bidirectional_ln_lstm_with_sequences_matches_tape_over_hand_unroll():
    x, y = _data(1)
    inputs = keras.Input((T, F))
    seq = keras.layers.Bidirectional(
        keras.layers.RNN(keras_bn.LayerNormLSTMCell(U), return_sequences=True), merge_mode="sum", name="bi"
    )(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(seq)
    model = keras.Model(inputs, keras.layers.Dense(C, name="head")(pooled))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bi = model.get_layer("bi")
    for v in bi.weights:  # random gains and biases too
        v.assign(np.random.default_rng(2).normal(0, 0.5, v.shape).astype("float32"))
    w_head, b_head = [tf.constant(w) for w in model.get_layer("head").get_weights()]
    with tf.GradientTape() as tape:
        by_direction = {}
        for direction, layer, order in (("forward", bi.forward_layer, range(T)),
                                        ("backward", bi.backward_layer, range(T - 1, -1, -1))):
            states = [tf.zeros((B, U)), tf.zeros((B, U))]
            outputs = {}
            for t in order:
                h, states = layer.cell(tf.constant(x[:, t]), states)
                tape.watch(h)
                outputs[t] = h
            by_direction[direction] = outputs
        summed = [by_direction["forward"][t] + by_direction["backward"][t] for t in range(T)]
        loss = _ce(y, tf.reduce_mean(tf.stack(summed, 1), axis=1) @ w_head + b_head)
    forward = [by_direction["forward"][t] for t in range(T)]
    backward = [by_direction["backward"][t] for t in range(T - 1, -1, -1)]  # processing order
    grads = tape.gradient(loss, forward + backward)
    expected = np.array([float(tf.norm(g)) for g in grads])

    cb = TimeGradients("unused", probe=(x, y))
    cb.set_model(model)
    cb._attach()
    got = cb.read()
    assert list(got) == ["bi/forward", "bi/backward"]
    np.testing.assert_allclose(np.concatenate([got["bi/forward"], got["bi/backward"]]), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_keras_layers_with_go_backwards_match_hand_unroll(cell):
    x, y = _data(3)
    layer_cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell]
    inputs = keras.Input((T, F))
    h = layer_cls(U, go_backwards=True, name="rnn")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(C, activation="softmax", name="head")(h))
    model.compile("sgd", "sparse_categorical_crossentropy")
    layer = model.get_layer("rnn")
    w_head, b_head = [tf.constant(w) for w in model.get_layer("head").get_weights()]
    with tf.GradientTape() as tape:
        states = layer.get_initial_state(B)
        hidden = []
        for t in range(T - 1, -1, -1):
            h, states = layer.cell(tf.constant(x[:, t]), states)
            states = states if isinstance(states, list) else [states]
            tape.watch(h)
            hidden.append(h)
        loss = _ce(y, h @ w_head + b_head)
    expected = np.array([float(tf.norm(g)) for g in tape.gradient(loss, hidden)])
    cb = TimeGradients("unused", probe=(x, y))
    cb.set_model(model)
    cb._attach()
    np.testing.assert_allclose(cb.read()["rnn"], expected, rtol=1e-4, atol=1e-7)


def test_fit_writes_tags_csv_table_and_figure(tmp_path):
    x, y = _data(4)
    model = keras_bn.build_recurrent((T, F), [U, U], C, cell="simple", norm="layer")
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    cb = TimeGradients(tmp_path / "run", probe=(x, y), every=2, figure_secs=0)
    model.fit(np.tile(x, (4, 1, 1)), np.tile(y, 4), batch_size=B, epochs=1, verbose=0, callbacks=[cb])
    counts = tag_step_counts(str(tmp_path / "run" / "train"))
    tags = {tag for tag, _ in counts}
    expected = {f"time_grad/{layer}/{q}" for layer in ("block1_simple", "block2_simple") for q in ("first", "last", "ratio")}
    assert tags - {"custom_scalars__config__"} == expected | {"figures/time_gradients"}
    assert {step for tag, step in counts if tag == "time_grad/block1_simple/first"} == {2, 4}
    ratio = scalar_series(str(tmp_path / "run" / "train"), "time_grad/block1_simple/ratio")
    last_step, norms = cb.history[-1]
    assert last_step == 4
    np.testing.assert_allclose(ratio[4], norms["block1_simple"][0] / norms["block1_simple"][-1], rtol=1e-5)
    lines = (tmp_path / "run" / "time_gradients.csv").read_text().splitlines()
    assert lines[0] == "step,layer,t,norm" and len(lines) == 1 + 2 * 2 * T
    step, layer, t, value = lines[-1].split(",")
    assert (step, layer, t) == ("4", "block2_simple", str(T))
    np.testing.assert_allclose(float(value), norms["block2_simple"][-1], rtol=1e-5)
    assert "block1_simple" in cb.table() and f"\n" in cb.table()


def test_refusals_say_why(tmp_path):
    x, y = _data()
    inputs = keras.Input((T, F))
    h = keras.layers.LSTM(U, stateful=False, return_state=True, name="rnn")(inputs)[0]
    model = keras.Model(inputs, keras.layers.Dense(C)(h))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = TimeGradients(tmp_path, probe=(x, y))
    cb.set_model(model)
    with pytest.raises(ValueError, match="return_state"):
        cb._attach()

    dense = keras.Sequential([keras.Input((F,)), keras.layers.Dense(C)])
    dense.compile("sgd", "mse")
    cb = TimeGradients(tmp_path, probe=(x[:, 0], y))
    cb.set_model(dense)
    with pytest.raises(ValueError, match="no recurrent layer"):
        cb._attach()

    masked_in = keras.Input((T, F))
    masked = keras.layers.Masking()(masked_in)
    out = keras.layers.Dense(C)(keras.layers.SimpleRNN(U, name="rnn")(masked))
    masked_model = keras.Model(masked_in, out)
    masked_model.compile("sgd", "mse")
    cb = TimeGradients(tmp_path, probe=(x, y))
    cb.set_model(masked_model)
    with pytest.raises(ValueError, match="mask"):
        cb._attach()

    cb = TimeGradients(tmp_path, probe=(x, y), layers=["dense_x"])
    cb.set_model(masked_model)
    with pytest.raises(ValueError, match="dense_x"):
        cb._attach()

    with pytest.raises(TypeError, match="pair"):
        TimeGradients(tmp_path, probe=x)
    assert recurrent_layers(masked_model) == ["rnn"]


def test_beside_the_preset_one_run_and_rnn_saturation(tmp_path):
    """Shares the preset's writers; the preset's activation stats see the SimpleRNN's tanh states."""
    x, y = _data(5)
    model = keras_bn.build_recurrent((T, F), U, C, cell="simple")
    cell = model.get_layer("block1_simple").cell
    cell.kernel.assign(cell.kernel * 8.0)  # large inputs: some states saturate
    model.compile(keras.optimizers.SGD(1e-4), "sparse_categorical_crossentropy")
    cbs = keras_bn.callbacks.diagnostics(tmp_path, probe=x, every=1, figures=False, update_ratio=False, bn_check=False)
    cbs.append(keras_bn.callbacks.TimeGradients(tmp_path, (x, y), every=1, figures=False, writers=cbs[0].writers))
    model.fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=cbs)
    tags = {tag for tag, _ in tag_step_counts(str(tmp_path / "train"))}
    assert {"time_grad/block1_simple/ratio", "saturation/block1_simple", "grad_norm/block1_simple"} <= tags
    # the SimpleRNN's final state on the probe after the one step (the weights the read saw)
    h = keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("block1_simple").output)(x))
    saturation = scalar_series(str(tmp_path / "train"), "saturation/block1_simple")
    stats = next(cb for cb in cbs if isinstance(cb, keras_bn.callbacks.ActivationStats))
    threshold = stats.saturation_threshold
    expected = float(np.mean(np.abs(h) > threshold))
    assert 0 < expected < 1
    assert saturation[1] == pytest.approx(expected, abs=1e-6)


class _DoublingRNN(keras.layers.SimpleRNN):
    """An RNN whose output is not what its cell computes: the unroll cannot reproduce it."""

    def call(self, sequences, initial_state=None, mask=None, training=False):
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training) * 2.0


def test_layer_the_unroll_does_not_reproduce_is_left_out_with_a_warning(tmp_path):
    x, y = _data(6)
    inputs = keras.Input((T, F))
    out = keras.layers.Dense(C)(_DoublingRNN(U, name="odd")(inputs))
    model = keras.Model(inputs, out)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = TimeGradients(tmp_path, probe=(x, y))
    cb.set_model(model)
    cb._attach()
    with pytest.warns(RuntimeWarning, match="does not reproduce"):
        assert cb.read() == {}
    assert cb.read() == {}  # left out from then on, no second warning needed


def test_multi_output_models_are_refused(tmp_path):
    x, y = _data()
    inputs = keras.Input((T, F))
    h = keras.layers.SimpleRNN(U)(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(C)(h), keras.layers.Dense(1)(h)])
    model.compile("sgd", ["mse", "mse"])
    cb = TimeGradients(tmp_path, probe=(x, y))
    cb.set_model(model)
    with pytest.raises(ValueError, match="one output"):
        cb._attach()
