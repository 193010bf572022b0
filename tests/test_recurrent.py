"""LayerNorm cells against NumPy implementations of their equations; serialization; dropout."""

import numpy as np
import pytest

import keras

from keras_bn.recurrent import (
    LayerNormGRU,
    LayerNormGRUCell,
    LayerNormLSTM,
    LayerNormLSTMCell,
    LayerNormSimpleRNN,
    LayerNormSimpleRNNCell,
)

EPS = 1e-3
BATCH, STEPS, FEATURES, UNITS = 3, 5, 4, 6


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _ln(x, gain, shift=0.0):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return gain * (x - mean) / np.sqrt(var + EPS) + shift


def _np_lstm(x, w):
    """Ba et al. 2016 eq. (20)-(22), gates (i, f, g, o)."""
    h = np.zeros((x.shape[0], UNITS))
    c = np.zeros((x.shape[0], UNITS))
    outs = []
    for t in range(x.shape[1]):
        z = _ln(x[:, t] @ w["kernel"], w["input_gain"]) + _ln(h @ w["recurrent_kernel"], w["recurrent_gain"]) + w["bias"]
        i, f, g, o = np.split(z, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(_ln(c, w["cell_gain"], w["cell_shift"]))
        outs.append(h)
    return np.stack(outs, 1)


def _np_gru(x, w):
    h = np.zeros((x.shape[0], UNITS))
    outs = []
    for t in range(x.shape[1]):
        xp = _ln(x[:, t] @ w["kernel"], w["input_gain"]) + w["bias"]
        hp = _ln(h @ w["recurrent_kernel"], w["recurrent_gain"], w["recurrent_shift"])
        xz, xr, xn = np.split(xp, 3, axis=-1)
        hz, hr, hn = np.split(hp, 3, axis=-1)
        z, r = _sigmoid(xz + hz), _sigmoid(xr + hr)
        n = np.tanh(xn + r * hn)
        h = z * h + (1 - z) * n
        outs.append(h)
    return np.stack(outs, 1)


def _np_simple(x, w):
    h = np.zeros((x.shape[0], UNITS))
    outs = []
    for t in range(x.shape[1]):
        h = np.tanh(_ln(x[:, t] @ w["kernel"] + h @ w["recurrent_kernel"], w["gain"], w["bias"]))
        outs.append(h)
    return np.stack(outs, 1)


CELLS = [(LayerNormLSTMCell, _np_lstm), (LayerNormGRUCell, _np_gru), (LayerNormSimpleRNNCell, _np_simple)]
FAST = {LayerNormLSTMCell: LayerNormLSTM, LayerNormGRUCell: LayerNormGRU, LayerNormSimpleRNNCell: LayerNormSimpleRNN}


def _randomized(layer, rng):
    """Give every weight of `layer` random values (gains and shifts too), return them by name."""
    weights = {}
    for variable in layer.weights:
        value = rng.normal(0.0, 0.7, size=variable.shape)
        variable.assign(value.astype("float32"))
        weights[variable.name] = value.astype("float32").astype(np.float64)
    return weights


@pytest.mark.parametrize("fast", [False, True], ids=["cell", "fast_layer"])
@pytest.mark.parametrize("cell_cls, reference", CELLS, ids=["lstm", "gru", "simple"])
def test_cell_matches_numpy_equations(cell_cls, reference, fast):
    rng = np.random.default_rng(0)
    layer = FAST[cell_cls](UNITS, return_sequences=True) if fast else keras.layers.RNN(cell_cls(UNITS), return_sequences=True)
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    layer(x)
    weights = _randomized(layer, rng)
    expected = reference(x.astype(np.float64), weights)
    got = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_lstm_weights_and_forget_bias():
    cell = LayerNormLSTMCell(UNITS)
    layer = keras.layers.RNN(cell)
    layer(np.zeros((1, 2, FEATURES), "float32"))
    names = sorted(v.name for v in layer.weights)
    assert names == sorted(["kernel", "recurrent_kernel", "bias", "input_gain", "recurrent_gain", "cell_gain", "cell_shift"])
    bias = keras.ops.convert_to_numpy(cell.bias)
    np.testing.assert_array_equal(bias[UNITS:2 * UNITS], 1.0)
    np.testing.assert_array_equal(np.delete(bias, np.s_[UNITS:2 * UNITS]), 0.0)
    # orthogonal recurrent kernel by default: each (u, u) gate block has orthonormal columns
    recurrent = keras.ops.convert_to_numpy(cell.recurrent_kernel)
    gram = recurrent @ recurrent.T
    np.testing.assert_allclose(gram, np.eye(UNITS), atol=1e-5)


@pytest.mark.parametrize("cell_cls", [c for c, _ in CELLS], ids=["lstm", "gru", "simple"])
def test_keras_file_round_trip_safe_mode(cell_cls, tmp_path):
    inputs = keras.Input((STEPS, FEATURES))
    outputs = keras.layers.RNN(cell_cls(UNITS, dropout=0.2, recurrent_dropout=0.1, epsilon=1e-4,
                                        kernel_initializer="he_normal"), name="rnn")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    cell = loaded.get_layer("rnn").cell
    assert type(cell) is cell_cls
    assert (cell.dropout, cell.recurrent_dropout, cell.epsilon) == (0.2, 0.1, 1e-4)
    assert type(cell.kernel_initializer).__name__ == "HeNormal"


@pytest.mark.parametrize("cell_cls", [c for c, _ in CELLS], ids=["lstm", "gru", "simple"])
def test_dropout_only_in_training(cell_cls):
    layer = keras.layers.RNN(cell_cls(UNITS, dropout=0.5, recurrent_dropout=0.5, seed=3), return_sequences=True)
    x = np.random.default_rng(2).normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    inference = [keras.ops.convert_to_numpy(layer(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    plain = keras.layers.RNN(cell_cls(UNITS), return_sequences=True)
    plain(x)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(inference[0], keras.ops.convert_to_numpy(plain(x)), atol=1e-6)
    trained = keras.ops.convert_to_numpy(layer(x, training=True))
    assert np.abs(trained - inference[0]).max() > 1e-3


@pytest.mark.parametrize("cell_cls", [c for c, _ in CELLS], ids=["lstm", "gru", "simple"])
def test_fast_layer_equals_rnn_of_its_cell(cell_cls):
    """Backwards, masked, with final states, and in training with dropout (the same seed draws
    the same masks): the fast layer's outputs are RNN(cell)'s."""
    rng = np.random.default_rng(5)
    options = dict(dropout=0.3, recurrent_dropout=0.2, seed=7)
    layer_options = dict(return_sequences=True, return_state=True, go_backwards=True)
    fast = FAST[cell_cls](UNITS, **options, **layer_options)
    plain = keras.layers.RNN(cell_cls(UNITS, **options), **layer_options)
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    mask = np.ones((BATCH, STEPS), bool)
    mask[0, 3:] = False
    fast(x), plain(x)
    _randomized(fast, rng)
    plain.set_weights(fast.get_weights())
    for training, step_mask in ((False, mask), (True, mask), (False, None), (True, None)):  # unmasked: the fused loop
        got = fast(x, mask=step_mask, training=training)
        expected = plain(x, mask=step_mask, training=training)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-5)


@pytest.mark.backends("tensorflow", reason="the whole-sequence fused loop is TensorFlow-only; "
                                          "the reference gradients come from tf.GradientTape")
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_lstm_sequence_loop_gradients_with_dropout_equal_rnn_of_its_cell(graph):
    """`LayerNormLSTM`'s fused sequence loop (hand-written backward loop) in training, with
    input and recurrent dropout (the same seed: the same masks), backwards, returning every
    step and the final states: its gradients are those of RNN(cell) (the per-step path)."""
    import tensorflow as tf

    rng = np.random.default_rng(10)
    options = dict(dropout=0.3, recurrent_dropout=0.2, seed=7)
    layer_options = dict(return_sequences=True, return_state=True, go_backwards=True)
    fast = LayerNormLSTM(UNITS, **options, **layer_options)
    plain = keras.layers.RNN(LayerNormLSTMCell(UNITS, **options), **layer_options)
    x = tf.constant(rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32"))
    fast(x), plain(x)
    _randomized(fast, rng)
    plain.set_weights(fast.get_weights())
    weights = [rng.normal(size=(BATCH, STEPS, UNITS)), rng.normal(size=(BATCH, UNITS)), rng.normal(size=(BATCH, UNITS))]

    def gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = sum(tf.reduce_sum(out * w) for out, w in zip(layer(x, training=True), weights))
        return tape.gradient(loss, [x, *layer.trainable_weights])

    run = tf.function(gradients) if graph else gradients
    for a, b in zip(run(fast), run(plain)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5, rtol=1e-4)


@pytest.mark.backends("tensorflow", reason="the reference gradients come from tf.GradientTape "
                                          "(the JAX path is checked against jax.grad below)")
@pytest.mark.parametrize("cell_cls", [LayerNormLSTMCell, LayerNormGRUCell], ids=["lstm", "gru"])
def test_fast_layer_gradients_equal_rnn_of_its_cell(cell_cls):
    """The sequence projection's LN (centred kernel, variance as a quadratic form) has the
    gradients of the per-step LN."""
    import tensorflow as tf

    rng = np.random.default_rng(6)
    fast, plain = FAST[cell_cls](UNITS), keras.layers.RNN(cell_cls(UNITS))
    x = tf.constant(rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32"))
    fast(x), plain(x)
    _randomized(fast, rng)
    plain.set_weights(fast.get_weights())
    grads = []
    for layer in (fast, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x)))
        grads.append(tape.gradient(loss, [x, *layer.trainable_weights]))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5, rtol=1e-4)


def _tf_lstm_unroll(x, w, go_backwards=False):
    """The paper's equations with plain TensorFlow ops, step by step (autodiff's gradients)."""
    import tensorflow as tf

    def ln(a, gain, shift=0.0):
        mean, var = tf.nn.moments(a, axes=[-1], keepdims=True)
        return gain * (a - mean) / tf.sqrt(var + EPS) + shift

    h = c = tf.zeros((x.shape[0], UNITS))
    outs = []
    for t in (range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])):
        z = ln(x[:, t] @ w["kernel"], w["input_gain"]) + ln(h @ w["recurrent_kernel"], w["recurrent_gain"]) + w["bias"]
        i, f, g, o = tf.split(z, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(ln(c, w["cell_gain"], w["cell_shift"]))
        outs.append(h)
    return tf.stack(outs, 1)


@pytest.mark.backends("tensorflow", reason="the reference gradients come from tf.GradientTape "
                                          "(the JAX path is checked against jax.grad below)")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autodiff"])
@pytest.mark.parametrize("fast", [False, True], ids=["cell", "fast_layer"])
def test_lstm_gradients_equal_autodiff_of_the_equations(fast, fused, monkeypatch):
    """The fused step's hand-written gradient (and the autodiff fallback) against a GradientTape
    over a manual unroll of the paper's equations, for the inputs and every weight."""
    import tensorflow as tf

    import keras_bn.recurrent_cells

    if not fused:
        monkeypatch.setattr(keras_bn.recurrent_cells, "fused_step_applies", lambda cell: False)
    rng = np.random.default_rng(8)
    layer = LayerNormLSTM(UNITS, return_sequences=True) if fast else keras.layers.RNN(LayerNormLSTMCell(UNITS), return_sequences=True)
    x = tf.constant(rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32"))
    layer(x)
    _randomized(layer, rng)
    weights = {v.name: v for v in layer.trainable_weights}
    upstream = tf.constant(rng.normal(size=(BATCH, STEPS, UNITS)).astype("float32"))
    grads = []
    for run in (lambda: layer(x), lambda: _tf_lstm_unroll(x, {n: tf.convert_to_tensor(v) for n, v in weights.items()})):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(run() * upstream)
        grads.append(tape.gradient(loss, [x, *weights.values()]))
    for name, a, b in zip(["inputs", *weights], *grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5, rtol=1e-4, err_msg=name)


@pytest.mark.backends("jax", reason="checks the fused step's custom gradient on JAX against jax.grad "
                                   "(TensorFlow: the GradientTape tests above)")
def test_lstm_fused_gradients_on_jax_equal_autodiff(monkeypatch):
    """On JAX the fused step's custom gradient equals jax.grad of the autodiff fallback."""
    import jax

    import keras_bn.recurrent_cells

    rng = np.random.default_rng(9)
    layer = LayerNormLSTM(UNITS, return_sequences=True, go_backwards=True)
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    layer(x)
    _randomized(layer, rng)
    trainable = [v.value for v in layer.trainable_variables]

    def loss(values, inputs):
        outputs, _ = layer.stateless_call(values, [v.value for v in layer.non_trainable_variables], inputs)
        return (outputs * np.linspace(-1, 1, UNITS, dtype="float32")).sum()

    fused = jax.grad(loss, argnums=(0, 1))(trainable, x)
    monkeypatch.setattr(keras_bn.recurrent_cells, "fused_step_applies", lambda cell: False)
    plain = jax.grad(loss, argnums=(0, 1))(trainable, x)
    for a, b in zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


def test_fast_layer_projects_the_whole_sequence_once(monkeypatch):
    layer = LayerNormLSTM(UNITS, return_sequences=True)
    x = np.zeros((BATCH, STEPS, FEATURES), "float32")
    layer(x)
    shapes = []
    original = layer.cell._normed_projection
    monkeypatch.setattr(layer.cell, "_normed_projection", lambda inputs, gain: shapes.append(tuple(inputs.shape)) or original(inputs, gain))
    layer(x)
    assert shapes == [(STEPS, BATCH, FEATURES)]  # once, time-major (the loop reads it so)


@pytest.mark.parametrize("cell_cls", [c for c, _ in CELLS], ids=["lstm", "gru", "simple"])
def test_fast_layer_keras_file_round_trip_safe_mode(cell_cls, tmp_path):
    inputs = keras.Input((STEPS, FEATURES))
    layer = FAST[cell_cls](UNITS, dropout=0.2, recurrent_dropout=0.1, epsilon=1e-4, kernel_initializer="he_normal",
                           return_sequences=True, name="fast")
    outputs = keras.layers.Bidirectional(FAST[cell_cls](3), name="bi")(layer(inputs))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    fast = loaded.get_layer("fast")
    assert type(fast) is FAST[cell_cls] and type(fast.cell) is cell_cls and fast.return_sequences
    assert (fast.cell.dropout, fast.cell.recurrent_dropout, fast.cell.epsilon, fast.units) == (0.2, 0.1, 1e-4, UNITS)
    assert type(fast.cell.kernel_initializer).__name__ == "HeNormal"
    assert loaded.get_layer("bi").backward_layer.go_backwards


def test_input_dropout_mask_is_one_per_sequence():
    """With dropout on the inputs only, the units dropped are the same at every step."""
    cell = LayerNormSimpleRNNCell(UNITS, dropout=0.5, seed=0)
    layer = keras.layers.RNN(cell, return_sequences=True)
    x = np.ones((2, STEPS, 40), "float32")
    layer(x)
    seen = []
    original = cell.get_dropout_mask

    def spy(step_input):
        mask = original(step_input)
        seen.append(mask)
        return mask

    cell.get_dropout_mask = spy
    layer(x, training=True)
    masks = [keras.ops.convert_to_numpy(m) for m in seen]
    assert len(masks) >= 1
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask, masks[0])
    assert 0 < (masks[0] == 0).mean() < 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"units": 0}, "units"),
        ({"units": 4, "dropout": 1.5}, "dropout=1.5"),
        ({"units": 4, "recurrent_dropout": -0.1}, "recurrent_dropout=-0.1"),
        ({"units": 4, "epsilon": 0.0}, "epsilon=0.0"),
        ({"units": 4, "use_bias": "yes"}, "use_bias='yes'"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LayerNormLSTMCell(**kwargs)


def test_trains_a_step_and_reduces_loss():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, STEPS, FEATURES)).astype("float32")
    y = (x[:, 0, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((STEPS, FEATURES)),
                              keras.layers.RNN(LayerNormGRUCell(8, dropout=0.1, recurrent_dropout=0.1)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before


# --- build_recurrent -------------------------------------------------------------------

BUILD_OPTIONS = [
    dict(cell=cell, norm=norm, bidirectional=bi, return_sequences=seq)
    for cell in ("lstm", "gru", "simple")
    for norm in (None, "layer")
    for bi, seq in ((False, False), (True, True))
]


@pytest.mark.parametrize("options", BUILD_OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_build_recurrent_every_option_builds_and_trains_a_step(options):
    import keras_bn

    model = keras_bn.build_recurrent((4, 3), [5, 6], 3, dropout=0.1, **options)
    names = [layer.name for layer in model.layers]
    kind = ("bi" if options["bidirectional"] else "") + options["cell"]
    assert names == ["inputs", f"block1_{kind}", f"block2_{kind}", "logits", "predictions"]
    rnn = model.get_layer(f"block1_{kind}")
    inner = rnn.forward_layer if options["bidirectional"] else rnn
    if options["norm"] == "layer":
        assert type(inner) is keras_bn.recurrent._LN_LAYERS[options["cell"]]
    else:
        assert type(inner) is {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple": keras.layers.SimpleRNN}[options["cell"]]
    width = 12 if options["bidirectional"] else 6
    expected_shape = (2, 4, 3) if options["return_sequences"] else (2, 3)
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    y = np.zeros(expected_shape[:-1], "int32")
    assert model.get_layer("logits").input.shape[-1] == width
    # eager (no tracing: 12 cases on a shared CPU); the graph-mode step is the LN test below
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, epochs=1, verbose=0)
    assert tuple(model(x).shape) == expected_shape
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert all(changed)


def test_build_recurrent_initializers_by_name_and_std():
    import keras_bn

    model = keras_bn.build_recurrent((6, 1), 50, 2, cell="simple", initializer=0.1, recurrent_initializer=0.1,
                                     output_activation=None, unroll=True)
    layer = model.get_layer("block1_simple")
    kernel = keras.ops.convert_to_numpy(layer.cell.recurrent_kernel)
    assert abs(kernel.std() - 0.1) < 0.01 and abs(kernel.mean()) < 0.01
    assert model.get_layer("logits").output.shape == (None, 2)
    assert "predictions" not in [layer.name for layer in model.layers]
    assert layer.unroll
    unrolled = keras.ops.convert_to_numpy(model(np.ones((2, 6, 1), "float32")))
    looped = keras_bn.build_recurrent((6, 1), 50, 2, cell="simple", output_activation=None)
    looped.set_weights(model.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(looped(np.ones((2, 6, 1), "float32"))), unrolled, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cell="lstmm"), "Did you mean 'lstm'"),
        (dict(norm="batch"), "norm='batch'"),
        (dict(norm="laeyr"), "laeyr"),
        (dict(input_shape=(28,)), r"input_shape=\(28,\)"),
        (dict(units=[4, 0]), "units"),
        (dict(num_classes=1), "num_classes"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(initializer="he_nromal"), "he_nromal"),
        (dict(norm="layer", norm_kwargs={"center": False}), "epsilon"),
        (dict(norm_kwargs={"epsilon": 1e-5}), "norm='layer'"),
        (dict(bidirectional="yes"), "bidirectional='yes'"),
        (dict(input_shape=(None, 3), unroll=True), "unroll=True"),
    ],
)
def test_build_recurrent_bad_options_fail_before_any_layer(kwargs, match, monkeypatch):
    import keras_bn

    made = []
    original = keras.layers.Layer.__init__

    def spy(self, *args, **kw):
        made.append(type(self).__name__)
        original(self, *args, **kw)

    monkeypatch.setattr(keras.layers.Layer, "__init__", spy)
    arguments = dict(input_shape=(5, 3), units=4, num_classes=3)
    arguments.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        keras_bn.build_recurrent(arguments.pop("input_shape"), arguments.pop("units"), arguments.pop("num_classes"), **arguments)
    assert made == []
