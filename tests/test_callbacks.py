"""Tests for keras_bn.callbacks: event files are read back with TensorBoard's own loader."""

from __future__ import annotations

import glob
import os
from collections import defaultdict

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorboard.backend.event_processing import event_file_loader  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import callbacks as kbc  # noqa: E402
from tests._events import run_values  # noqa: E402
from tests._tap_mlp import assert_batch_logs_are_those_fit_passes  # noqa: E402

# A diagnostic that fails only warns ("keras_bn ..."): in these tests that is an error.
pytestmark = pytest.mark.filterwarnings("error:keras_bn:RuntimeWarning")

LOSS = "sparse_categorical_crossentropy"


# --- helpers ---------------------------------------------------------------------------
read_run = run_values  # ({tag: [(step, ndarray), ...]}, {tag: plugin}), read with keras-bn's reader


def scalar(values, tag, step=None):
    """The scalar logged under `tag` at `step` (the last one if None)."""
    entries = values[tag] if step is None else [e for e in values[tag] if e[0] == step]
    assert entries, f"no {tag} at step {step}"
    return float(entries[-1][1])


def fit(model, x, y, callbacks, **kwargs):
    kwargs = {"batch_size": len(x), "epochs": 1, "verbose": 0, "shuffle": False, **kwargs}
    return model.fit(x, y, callbacks=callbacks, **kwargs)


def small_conv_net():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


def tape_layer_norms(model, x, y):
    """Per-layer gradient norms (by variable) from an independent GradientTape pass."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    owner = {id(v): layer.name for layer in model.layers for v in layer.trainable_variables}
    per_variable = [(owner[id(v)], float(tf.reduce_sum(tf.square(g)))) for v, g in zip(model.trainable_variables, grads)]
    return per_variable


def layer_norms(per_variable, transform=lambda sumsq: sumsq):
    totals = defaultdict(float)
    for layer, sumsq in per_variable:
        totals[layer] += transform(sumsq)
    return {layer: np.sqrt(total) for layer, total in totals.items()}


# --- gradient norms --------------------------------------------------------------------
@pytest.mark.parametrize("clip", [None, "clipnorm", "global_clipnorm"])
def test_gradient_norms_equal_gradient_tape(tmp_path, clip):
    keras.utils.set_random_seed(1)
    model = small_conv_net()
    limit = 0.05
    model.compile(keras.optimizers.SGD(0.1, **({clip: limit} if clip else {})), LOSS)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 6, 6, 2)).astype("float32"), rng.integers(0, 3, 16)
    # Independent pass on a copy of the same weights (fit changes them).
    reference = small_conv_net()
    reference.set_weights(model.get_weights())
    per_variable = tape_layer_norms(reference, x, y)
    preclip = layer_norms(per_variable)
    global_norm = np.sqrt(sum(s for _, s in per_variable))
    if clip == "clipnorm":
        applied = layer_norms(per_variable, lambda s: min(s, limit**2))
    elif clip == "global_clipnorm":
        applied = {k: v * min(1.0, limit / global_norm) for k, v in preclip.items()}
    else:
        applied = preclip

    callback = kbc.GradientNorms(str(tmp_path), every=1, figures=False)
    fit(model, x, y, [callback])
    values, _ = read_run(str(tmp_path / "train"))

    for layer in ("conv", "bn", "predictions"):
        assert scalar(values, f"grad_norm/{layer}", 1) == pytest.approx(applied[layer], rel=1e-5)
    expected_global = np.sqrt(sum(v**2 for v in applied.values()))
    assert scalar(values, "grad_global/norm", 1) == pytest.approx(expected_global, rel=1e-5)
    assert scalar(values, "nonfinite/grad_steps", 1) == 0
    if clip is None:
        assert not any(t.startswith("grad_norm_preclip/") for t in values)
        assert "grad_global/clip_fraction" not in values
    else:
        for layer in ("conv", "bn", "predictions"):
            assert scalar(values, f"grad_norm_preclip/{layer}", 1) == pytest.approx(preclip[layer], rel=1e-5)
        assert scalar(values, "grad_global/norm_preclip", 1) == pytest.approx(global_norm, rel=1e-5)
        assert global_norm > limit  # so clipping engaged on the one step
        assert scalar(values, "grad_global/clip_fraction", 1) == 1.0
    # The optimizer is restored and the writers closed after fit.
    assert "apply" not in vars(model.optimizer)
    assert callback.writers._writers == {}


def test_clip_fraction_counts_only_clipped_steps(tmp_path):
    """A huge clipnorm never engages: fraction 0 over a window of 4 steps."""
    model = small_conv_net()
    model.compile(keras.optimizers.SGD(0.01, clipnorm=1e6), LOSS)
    x, y = np.random.default_rng(1).normal(size=(32, 6, 6, 2)).astype("float32"), np.arange(32) % 3
    fit(model, x, y, [kbc.GradientNorms(str(tmp_path), every=4, figures=False)], batch_size=8)
    values, _ = read_run(str(tmp_path / "train"))
    assert [s for s, _ in values["grad_global/clip_fraction"]] == [4]
    assert scalar(values, "grad_global/clip_fraction") == 0.0


def deep_sigmoid_norms(tmp_path, norm):
    keras.utils.set_random_seed(3)
    model = keras_bn.build_dense((32,), [32] * 6, 4, activation="sigmoid", norm=norm)
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    x = np.random.default_rng(3).normal(size=(64, 32)).astype("float32")
    y = np.arange(64) % 4
    fit(model, x, y, [kbc.GradientNorms(str(tmp_path), every=1, figures=False)], batch_size=32)
    values, _ = read_run(str(tmp_path / "train"))
    return [scalar(values, f"grad_norm/block{i}_dense") for i in range(1, 7)]


def test_deep_sigmoid_gradients_vanish_toward_input_but_not_with_bn(tmp_path):
    plain = deep_sigmoid_norms(tmp_path / "plain", None)
    with_bn = deep_sigmoid_norms(tmp_path / "bn", "batch")
    # Without BN each sigmoid layer shrinks the gradient (derivative <= 0.25).
    assert plain[0] < 0.05 * plain[-1]
    assert all(a < b for a, b in zip(plain, plain[1:]))
    # With BN the first layer's gradient stays within a generous factor of the last one's.
    assert with_bn[0] > 0.2 * with_bn[-1]


# --- activation statistics -----------------------------------------------------------------
def probe_test_model():
    inputs = keras.Input((4,), name="inputs")
    dead = keras.layers.Dense(8, activation="relu", bias_initializer=keras.initializers.Constant(-100.0), name="dead")(inputs)
    alive = keras.layers.Dense(8, activation="relu", bias_initializer=keras.initializers.Constant(100.0), name="alive")(inputs)
    big = keras.layers.Dense(8, name="big", kernel_initializer=keras.initializers.Constant(1000.0))(inputs)
    saturated = keras.layers.Activation("tanh", name="saturated")(big)
    pre = keras.layers.Dense(5, name="pre")(inputs)
    squashed = keras.layers.Activation("sigmoid", name="squashed")(pre)
    merged = keras.layers.Concatenate(name="merge")([dead, alive, saturated, squashed])
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(merged)
    return keras.Model(inputs, outputs)


def test_dead_relu_saturated_tanh_and_sigmoid_percentiles(tmp_path):
    keras.utils.set_random_seed(0)
    model = probe_test_model()
    model.compile(keras.optimizers.SGD(0.0), LOSS)  # lr 0: the weights stay as built
    rng = np.random.default_rng(0)
    probe = rng.uniform(-1, 1, size=(64, 4)).astype("float32")
    x, y = probe[:16], np.arange(16) % 2
    callback = kbc.ActivationStats(str(tmp_path), probe, every=1, figures=False)
    fit(model, x, y, [callback])
    values, plugins = read_run(str(tmp_path / "train"))

    assert scalar(values, "dead_fraction/dead") == 1.0
    assert scalar(values, "zero_fraction/dead") == 1.0
    assert scalar(values, "dead_fraction/alive") == 0.0
    assert scalar(values, "zero_fraction/alive") == 0.0
    assert scalar(values, "saturation/saturated") > 0.95
    # Watched by default: the activation outputs, not the linear layers feeding them.
    watched = {t.split("/", 1)[1] for t in values if t.startswith("activation_std/")}
    assert watched == {"dead", "alive", "saturated", "squashed"}
    # Mean/std/percentiles against NumPy on the same probe and weights.
    pre_out = keras.Model(model.inputs, model.get_layer("pre").output).predict(probe, verbose=0)
    alive_out = keras.Model(model.inputs, model.get_layer("alive").output).predict(probe, verbose=0)
    assert scalar(values, "activation_mean/alive") == pytest.approx(alive_out.mean(), rel=1e-5)
    assert scalar(values, "activation_std/alive") == pytest.approx(alive_out.std(), rel=1e-4)
    unit = np.sort(pre_out[:, 0])
    for q in (15, 50, 85):
        expected = unit[int(round(q / 100 * (len(unit) - 1)))]
        assert scalar(values, f"preact/squashed/p{q}") == pytest.approx(expected, rel=1e-5, abs=1e-6)
    sigmoid_out = 1 / (1 + np.exp(-pre_out))
    expected_saturation = np.mean(np.abs(2 * sigmoid_out - 1) > 0.97)  # one threshold for tanh and sigmoid
    assert scalar(values, "saturation/squashed") == pytest.approx(expected_saturation, abs=1e-6)
    # Histograms hold every probe value of the layer.
    assert plugins["activation_hist/alive"] == "histograms"
    histogram = values["activation_hist/alive"][-1][1]
    assert histogram.shape == (30, 3) and histogram[:, 2].sum() == alive_out.size


def test_nested_sequential_layers_are_watched_by_path(tmp_path):
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, name="d"), keras.layers.ReLU(name="r")], name="inner"
    )
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(inner(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", LOSS)
    probe = np.random.default_rng(2).normal(size=(32, 4)).astype("float32")
    fit(model, probe[:8], np.arange(8) % 2, [kbc.ActivationStats(str(tmp_path), probe, every=1, layers=["inner/r"], figures=False)])
    values, _ = read_run(str(tmp_path / "train"))
    expected = keras.Model(inner.inputs, inner.get_layer("r").output).predict(probe, verbose=0)
    assert scalar(values, "activation_mean/inner/r") == pytest.approx(expected.mean(), rel=1e-5)
    assert scalar(values, "zero_fraction/inner/r") == pytest.approx(np.mean(expected <= 0), abs=1e-6)


# --- update ratio --------------------------------------------------------------------------
def test_update_ratio_is_the_true_ratio_of_one_step(tmp_path):
    keras.utils.set_random_seed(4)
    model = keras_bn.build_dense((5,), [4], 3, norm=None)
    lr = 0.5
    model.compile(keras.optimizers.SGD(lr), LOSS)
    rng = np.random.default_rng(4)
    xb, yb = rng.normal(size=(8, 5)).astype("float32"), np.arange(8) % 3
    # Replay the two SGD steps by hand: the callback logs each step's own update at that step.
    reference = keras_bn.build_dense((5,), [4], 3, norm=None)
    reference.set_weights(model.get_weights())
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    ratios = {}
    for step in (1, 2):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, reference(xb, training=True))
        grads = tape.gradient(loss, reference.trainable_variables)
        for layer in ("block1_dense", "logits"):
            owned = {id(v) for v in reference.get_layer(layer).trainable_variables}
            pairs = [(g, v) for g, v in zip(grads, reference.trainable_variables) if id(v) in owned]
            update = np.sqrt(sum(float(tf.reduce_sum(tf.square(lr * g))) for g, _ in pairs))
            weight = np.sqrt(sum(float(tf.reduce_sum(tf.square(v))) for _, v in pairs))
            ratios[step, layer] = update / weight
        for g, v in zip(grads, reference.trainable_variables):
            v.assign_sub(lr * g)
    fit(model, np.concatenate([xb, xb]), np.concatenate([yb, yb]), [kbc.UpdateRatio(str(tmp_path), every=1)], batch_size=8)
    values, _ = read_run(str(tmp_path / "train"))
    assert [s for s, _ in values["update_ratio/logits"]] == [1, 2]
    for (step, layer), expected in ratios.items():
        assert scalar(values, f"update_ratio/{layer}", step) == pytest.approx(expected, rel=1e-4)


def test_update_ratio_with_steps_per_execution_spans_one_train_function_call(tmp_path):
    """With 2 steps per call, the snapshot is kept one call (2 steps) before each logging step,
    so the ratio logged there spans those 2 steps: checked against an SGD replayed by hand."""
    keras.utils.set_random_seed(5)
    model = keras_bn.build_dense((5,), [4], 3, norm=None)
    lr = 0.2
    model.compile(keras.optimizers.SGD(lr), LOSS, steps_per_execution=2)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(8, 5)).astype("float32"), np.arange(8) % 3
    reference = keras_bn.build_dense((5,), [4], 3, norm=None)
    reference.set_weights(model.get_weights())
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    logits = reference.get_layer("logits").trainable_variables
    history = [[v.numpy().astype(np.float64) for v in logits]]
    for step in range(8):
        with tf.GradientTape() as tape:
            loss = loss_fn(y[step:step + 1], reference(x[step:step + 1], training=True))
        for g, v in zip(tape.gradient(loss, reference.trainable_variables), reference.trainable_variables):
            v.assign_sub(lr * g)
        history.append([v.numpy().astype(np.float64) for v in logits])
    fit(model, x, y, [kbc.UpdateRatio(str(tmp_path), every=4)], batch_size=1)
    values, _ = read_run(str(tmp_path / "train"))
    series = dict(values["update_ratio/logits"])
    assert sorted(series) == [4, 8]
    for step in (4, 8):
        before, after = history[step - 2], history[step]
        update = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before)))
        weight = np.sqrt(sum(np.sum(b ** 2) for b in before))
        assert series[step] == pytest.approx(update / weight, rel=1e-4)


# --- non-finite values -----------------------------------------------------------------------
def test_a_finite_gradient_beyond_float32s_norm_range_counts_as_nonfinite_with_an_inf_norm(tmp_path):
    """The sums of squares are float32: a layer whose gradient norm passes about 1.8e19 overflows,
    so its norm is written as inf and the step counted in nonfinite/grad_steps (documented)."""
    model = keras_bn.build_dense((4,), [6], 2, norm=None)
    scale = 1e22

    def huge_loss(y_true, y_pred):
        return scale * keras.ops.mean(keras.ops.square(y_pred - keras.ops.cast(y_true, y_pred.dtype)))

    model.compile(keras.optimizers.SGD(0.0), huge_loss)
    x, y = np.ones((4, 4), "float32"), np.zeros((4, 2), "float32")
    model(x[:1])
    with tf.GradientTape() as tape:  # the gradients themselves, independently: finite, norm > 1.8e19
        loss = huge_loss(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    logits_kernel = next(g for g, v in zip(grads, model.trainable_variables) if v.path == "logits/kernel")
    assert np.isfinite(logits_kernel.numpy()).all()
    assert np.sqrt(np.sum(np.square(logits_kernel.numpy().astype(np.float64)))) > np.sqrt(np.finfo(np.float32).max)
    fit(model, x, y, [kbc.GradientNorms(str(tmp_path), every=1)], batch_size=4)
    values, _ = read_run(str(tmp_path / "train"))
    assert scalar(values, "nonfinite/grad_steps", 1) == 1
    assert scalar(values, "grad_norm/logits", 1) == np.inf
    assert "grad_global/norm_max" not in values  # no finite step: no maximum


def test_nonfinite_gradients_and_activations_are_counted_not_fatal(tmp_path):
    model = keras_bn.build_dense((4,), [6], 2, norm=None)
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    x = np.ones((8, 4), "float32")
    x[0, 0] = np.nan  # NaN loss -> NaN gradients -> NaN weights after the first step
    probe = np.ones((5, 4), "float32")
    probe[1, 2] = np.inf
    callbacks = kbc.diagnostics(str(tmp_path), probe=probe, every=1, layers=["block1_dense", "block1_relu"])
    history = fit(model, x, np.arange(8) % 2, callbacks, batch_size=4, epochs=2)
    assert len(history.history["loss"]) == 2  # the callbacks did not stop training
    values, plugins = read_run(str(tmp_path / "train"))
    # Step 1 had the NaN sample (the clipped cross-entropy keeps the loss finite, not the gradient).
    assert scalar(values, "nonfinite/grad_steps", 1) == 1
    assert np.isnan(scalar(values, "grad_norm/block1_dense", 1))
    assert np.isnan(model.get_weights()[0][0]).all()  # the first kernel row became NaN
    # Every probe sample meets the NaN row: all 5 x 6 linear outputs are non-finite, dropped.
    for step in (1, 2, 3, 4):
        assert scalar(values, "nonfinite/activations/block1_dense", step) == 5 * 6
    for tag in ("activation_hist/block1_dense", "activation_hist/block1_relu"):
        assert [s for s, _ in values[tag]] == [1, 2, 3, 4]
        assert all(np.isfinite(h).all() for _, h in values[tag])
    assert values["activation_hist/block1_dense"][-1][1][:, 2].sum() == 0
    assert plugins["figures/grad_norms"] == "images"


def test_only_terminate_on_nan_stops_training(tmp_path):
    model = keras_bn.build_dense((4,), [6], 2, norm=None, output_activation=None)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.ones((8, 4), "float32")
    y = np.full((8, 2), 1e30, "float32")  # squared error overflows: the loss is Inf at once
    callbacks = kbc.diagnostics(str(tmp_path), every=1) + [keras.callbacks.TerminateOnNaN()]
    history = fit(model, x, y, callbacks, batch_size=4, epochs=3)
    assert len(history.history["loss"]) == 1 and not np.isfinite(history.history["loss"][0])
    values, _ = read_run(str(tmp_path / "train"))
    assert [s for s, _ in values["nonfinite/grad_steps"]] == [1]  # stopped after one step
    assert not np.isfinite(scalar(values, "epoch_loss", 0))


# --- the preset: exact tag set, runs, failure ----------------------------------------------------
def expected_tags(layers_with_weights, activations, family, clipping):
    scalars = {"batch_loss", "batch_accuracy", "epoch_loss", "epoch_accuracy", "epoch_learning_rate",
               "grad_global/norm", "grad_global/norm_max", "nonfinite/grad_steps"}
    scalars |= {f"{q}/{l}" for l in layers_with_weights for q in ("grad_norm", "update_ratio")}
    if clipping:
        scalars |= {f"grad_norm_preclip/{l}" for l in layers_with_weights}
        scalars |= {"grad_global/norm_preclip", "grad_global/clip_fraction"}
    for a in activations:
        scalars |= {f"activation_mean/{a}", f"activation_std/{a}", f"nonfinite/activations/{a}"}
        if family == "relu":
            scalars |= {f"dead_fraction/{a}", f"zero_fraction/{a}"}
        else:
            scalars |= {f"saturation/{a}"} | {f"preact/{a}/p{q}" for q in (15, 50, 85)}
    histograms = {f"activation_hist/{a}" for a in activations}
    images = {"figures/activation_histograms", "figures/grad_norms"}
    return scalars, histograms, images


@pytest.mark.parametrize("activation, clipping", [("relu", True), ("tanh", False)])
def test_preset_writes_exactly_the_documented_tags(tmp_path, activation, clipping):
    model = keras_bn.build_dense((6,), [5, 5], 3, activation=activation)
    optimizer = keras.optimizers.Adam(1e-3, global_clipnorm=1.0) if clipping else keras.optimizers.Adam(1e-3)
    model.compile(optimizer, LOSS, metrics=["accuracy"])
    x = np.random.default_rng(5).normal(size=(24, 6)).astype("float32")
    y = np.arange(24) % 3
    fit(model, x, y, kbc.diagnostics(str(tmp_path), probe=x[:8], every=2), batch_size=8, validation_data=(x, y))
    values, plugins = read_run(str(tmp_path / "train"))
    with_weights = ["block1_dense", "block1_bn", "block2_dense", "block2_bn", "logits"]
    acts = [f"block1_{activation}", f"block2_{activation}"]
    scalars, histograms, images = expected_tags(with_weights, acts, activation, clipping)
    by_plugin = defaultdict(set)
    for tag, plugin in plugins.items():
        by_plugin[plugin].add(tag)
    assert by_plugin["scalars"] == scalars
    assert by_plugin["histograms"] == histograms
    assert by_plugin["images"] == images
    assert by_plugin["custom_scalars"] == {"custom_scalars__config__"}
    assert set(by_plugin) == {"scalars", "histograms", "images", "custom_scalars"}
    # Cadence: every 2 steps and at the epoch end (3 steps): steps 2 and 3.
    assert [s for s, _ in values["grad_global/norm"]] == [2, 3]
    val_values, val_plugins = read_run(str(tmp_path / "validation"))
    assert set(val_plugins) == {"epoch_loss", "epoch_accuracy"}
    assert sorted(os.listdir(tmp_path)) == ["doctor", "report.md", "train", "validation"]  # doctor: the live Doctor's
    # The custom-scalars layout has one chart per quantity, one regex over the layers.
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(values["custom_scalars__config__"][-1][1].item())
    regexes = {tag for chart in layout.category[0].chart for tag in chart.multiline.tag}
    assert {"grad_norm/.*", "update_ratio/.*", "activation_std/.*"} <= regexes


def test_an_exception_inside_fit_leaves_readable_event_files(tmp_path):
    model = keras_bn.build_dense((4,), [6], 2)
    model.compile("adam", LOSS)

    def batches():
        for i in range(100):
            if i == 3:
                raise RuntimeError("data pipeline broke")
            yield np.full((4, 4), float(i), "float32"), np.arange(4) % 2

    dataset = tf.data.Dataset.from_generator(
        batches, output_signature=(tf.TensorSpec((4, 4), tf.float32), tf.TensorSpec((4,), tf.int64))
    )
    callbacks = kbc.diagnostics(str(tmp_path), probe=np.ones((2, 4), "float32"), every=1)
    with pytest.raises(Exception, match="data pipeline broke"):
        model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    values, _ = read_run(str(tmp_path / "train"))
    # Logged before the 4th batch failed to load (steps 1-3 ran).
    assert [s for s, _ in values["grad_global/norm"]] == [1, 2, 3]
    assert [s for s, _ in values["batch_loss"]] == [1, 2, 3]
    assert len(values["activation_hist/block1_relu"]) == 3
    assert all(cb.writers._writers == {} for cb in callbacks)  # closed
    assert "apply" not in vars(model.optimizer)  # restored
    # The model trains normally afterwards, without the callbacks.
    model.fit(np.ones((4, 4), "float32"), np.arange(4) % 2, verbose=0)


def test_preset_keeps_its_traced_reads_across_fits_of_one_model(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(8, 4)).astype("float32"), np.arange(8) % 2
    model = keras_bn.build_dense(4, [6], 2)
    model.compile("sgd", LOSS)
    callbacks = kbc.diagnostics(str(tmp_path), probe=x[:4], every=1)
    by_type = {type(cb).__name__: cb for cb in callbacks}

    def traced():
        return (by_type["ActivationStats"]._compute, by_type["UpdateRatio"]._reduce,
                by_type["MetricsLogger"]._metrics_result)

    seen = []
    for epoch in range(3):  # one fit per epoch, as the bn_vs_no_bn recipe runs
        fit(model, x, y, callbacks, batch_size=4, epochs=epoch + 1, initial_epoch=epoch)
        seen.append(traced())
    assert seen == [seen[0]] * 3
    values, _ = read_run(str(tmp_path / "train"))
    # Each fit still logs as a first fit does: the ratio of every step (its first one included),
    # a histogram a step.
    assert [s for s, _ in values["update_ratio/block1_dense"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in values["activation_hist/block1_relu"]] == [1, 2, 3, 4, 5, 6]
    # A new probe of the same layout is an input of the same trace; new callbacks on the same
    # model reuse it too (the trace is kept with the model, keras_bn.callbacks._taps).
    by_type["ActivationStats"].probe = x[4:]
    fit(model, x, y, callbacks, batch_size=4)
    assert by_type["ActivationStats"]._compute is seen[0][0]
    fresh = {type(cb).__name__: cb for cb in kbc.diagnostics(str(tmp_path / "again"), probe=x[:4], every=1)}
    fit(model, x, y, list(fresh.values()), batch_size=4)
    assert fresh["ActivationStats"]._compute is seen[0][0] and fresh["UpdateRatio"]._reduce is seen[0][1]


def test_metrics_logger_writes_the_steps_logs_across_fits_and_after_recompile_and_traces_nothing(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(8, 4)).astype("float32"), np.arange(8) % 2
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", LOSS)
    logger = kbc.MetricsLogger(str(tmp_path), every=1)
    reads = []
    for epoch in range(3):  # one fit per epoch, as the bn_vs_no_bn recipe runs
        fit(model, x, y, [logger], batch_size=4, epochs=epoch + 1, initial_epoch=epoch)
        reads.append(logger._metrics_result)
    first_read = reads[0]
    # The batch values are the logs fit's steps returned: the read of the metric variables (for
    # callbacks driven by hand) is kept once per model and never traced inside a fit.
    assert reads == [first_read] * 3 and first_read.experimental_get_tracing_count() == 0
    model.compile("sgd", LOSS, metrics=["accuracy"])  # new metric variables (and optimizer)
    with pytest.warns(UserWarning, match="already holds steps up to 6"):
        fit(model, x, y, [logger], batch_size=4)
    assert logger._metrics_result is not first_read
    values, _ = read_run(str(tmp_path / "train"))
    assert [s for s, _ in values["batch_loss"]] == [1, 2, 3, 4, 5, 6, 7, 8]  # new optimizer: after the log's steps
    assert [s for s, _ in values["batch_accuracy"]] == [7, 8]
    assert 0.0 <= scalar(values, "batch_accuracy") <= 1.0


def test_batch_metrics_are_the_logs_fit_passes_to_on_train_batch_end(tmp_path):
    assert_batch_logs_are_those_fit_passes(tmp_path)



def test_metrics_logger_driven_by_hand_reads_the_metric_variables(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(12, 4)).astype("float32"), np.arange(12) % 2
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", LOSS, metrics=["accuracy"])
    # A fit before: the logs of its last step must not stand in for the loop's values.
    model.fit(x, y, batch_size=4, verbose=0, callbacks=[kbc.MetricsLogger(str(tmp_path / "fit"), every=1)])
    model.reset_metrics()

    @tf.function
    def step(xb, yb):  # a custom loop: no train function of fit's, only the compiled metrics
        model.compute_metrics(xb, yb, model(xb), None)

    callbacks = keras.callbacks.CallbackList([kbc.MetricsLogger(str(tmp_path), every=1)], model=model)
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(0)
    for batch in range(3):
        callbacks.on_train_batch_begin(batch)
        step(x[batch * 4:(batch + 1) * 4], y[batch * 4:(batch + 1) * 4])
        callbacks.on_train_batch_end(batch)
    callbacks.on_train_end()
    values, _ = read_run(str(tmp_path / "train"))
    right = np.argmax(model.predict(x, verbose=0), axis=1) == y
    done = int(model.optimizer.iterations)  # the fit's steps: the loop's batches are counted after them
    assert [s for s, _ in values["batch_accuracy"]] == [done + 1, done + 2]  # read at the next batch's start
    assert scalar(values, "batch_accuracy", done + 2) == pytest.approx(right[:8].mean())


# --- argument errors ---------------------------------------------------------------------------
def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="every=0"):
        kbc.diagnostics(str(tmp_path), every=0)
    with pytest.raises(TypeError, match="every='10'"):
        kbc.GradientNorms(str(tmp_path), every="10")
    with pytest.raises(TypeError, match="log_dir=3"):
        kbc.diagnostics(3)
    with pytest.raises(TypeError, match=r"replaced by saturation_threshold.*sigmoid_band=\(0.9, 0.1\)"):
        kbc.ActivationStats(str(tmp_path), np.ones((2, 4)), sigmoid_band=(0.9, 0.1))
    with pytest.raises(ValueError, match="saturation_threshold=1.5"):
        kbc.ActivationStats(str(tmp_path), np.ones((2, 4)), saturation_threshold=1.5)
    with pytest.raises(TypeError, match="figures='yes'"):
        kbc.diagnostics(str(tmp_path), figures="yes")
    with pytest.raises(TypeError, match="probe of type str"):
        kbc.ActivationStats(str(tmp_path), "x_val")
    with pytest.raises(ValueError, match="need a `probe`"):
        kbc.diagnostics(str(tmp_path), layers=["block1_relu"])


def test_probe_and_layer_errors_come_before_training(tmp_path):
    model = keras_bn.build_dense((4,), [6], 2)
    model.compile("adam", LOSS)
    x, y = np.ones((4, 4), "float32"), np.arange(4) % 2
    with pytest.raises(ValueError, match=r"expected a batch shaped \(None, 4\).*received \(3, 5\)"):
        model.fit(x, y, verbose=0, callbacks=[kbc.ActivationStats(str(tmp_path), np.ones((3, 5)))])
    with pytest.raises(ValueError, match="block1_rleu.*Did you mean 'block1_relu'"):
        model.fit(x, y, verbose=0, callbacks=[kbc.ActivationStats(str(tmp_path), x, layers=["block1_rleu"])])
    assert int(model.optimizer.iterations.numpy()) == 0
    assert not os.path.exists(tmp_path / "train")  # writers are lazy: nothing was written


@pytest.mark.parametrize("figure_secs, expected", [(60.0, 1), (0.0, 3)])
def test_figures_come_at_train_end_unless_their_interval_passed(tmp_path, figure_secs, expected):
    # Three sub-second epochs: with the default 60 s interval only the train-end figure is
    # drawn (no figure lands inside a short epoch); with 0 every epoch end draws one.
    model = keras_bn.build_dense((6,), [5], 3)
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    x = np.random.default_rng(6).normal(size=(16, 6)).astype("float32")
    y = np.arange(16) % 3
    fit(model, x, y, kbc.diagnostics(str(tmp_path), probe=x[:8], every=1, figure_secs=figure_secs), epochs=3)
    values, _ = read_run(str(tmp_path / "train"))
    for tag in ("figures/grad_norms", "figures/activation_histograms"):
        assert len(values[tag]) == expected, (tag, [step for step, _ in values[tag]])
        assert values[tag][-1][0] == 3  # the last figure shows the final state


def test_histogram_grid_blanks_unused_panels():
    from keras_bn.callbacks.figures import activation_histogram_grid

    edges, counts = np.linspace(-1, 1, 11), np.arange(10.0)
    grid = activation_histogram_grid({f"layer{i}": (edges, counts) for i in range(5)}, columns=4)
    height, width, channels = grid.shape
    assert channels == 4 and grid.dtype == np.uint8
    # 5 panels in a 2 x 4 grid: the last three cells of the second row are empty (white).
    empty = grid[height // 2 + 10:, width // 4 + 10:, :3]
    assert (empty == 255).all()
    used = grid[height // 2 + 10:, 10:width // 4 - 10, :3]
    assert (used < 255).any()


class FakeClock:
    """A clock that advances by `tick` seconds at every reading."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_max_overhead_skips_scheduled_reads_not_epoch_ends(tmp_path, monkeypatch):
    # Each clock reading advances 1 s, so every read "costs" 1 s and the time between the end
    # of one read and the next scheduled one is 1 s: a 1 s read is more than 0.5 x 1 s, so
    # with max_overhead=0.5 every other scheduled read is skipped; epoch ends always read.
    x, y = np.ones((16, 4), "float32"), np.arange(16) % 2
    logged = {}
    for budget in (None, 0.5):
        model = keras_bn.build_dense((4,), [6], 2)
        model.compile("adam", LOSS)
        cb = kbc.ActivationStats(str(tmp_path / str(budget)), x[:4], every=1, max_overhead=budget, figures=False)
        cb._clock = FakeClock(1.0)
        fit(model, x, y, [cb], batch_size=2, epochs=2)
        values, _ = read_run(str(tmp_path / str(budget) / "train"))
        logged[budget] = [s for s, _ in values["activation_mean/block1_relu"]]
        assert cb.get_config()["max_overhead"] == budget
        assert cb.skipped_reads == (0 if budget is None else 7)  # 14 scheduled, 7 read
    assert logged[None] == list(range(1, 17))  # 8 steps per epoch: every step read
    # Read, skip, read, ...; steps 8 and 16 are epoch ends (always read), so step 9 is skipped.
    assert logged[0.5] == [1, 3, 5, 7, 8, 10, 12, 14, 16]
    with pytest.raises(ValueError, match="max_overhead"):
        kbc.ActivationStats(str(tmp_path), x[:4], max_overhead=0.0)
    monkeypatch.undo()  # conftest turns the preset's budget off for the other tests
    preset = kbc.diagnostics(str(tmp_path / "preset"), probe=x[:4])
    assert next(cb for cb in preset if isinstance(cb, kbc.ActivationStats)).max_overhead == 0.02


def test_run_writers_events_read_back_with_tensorboards_accumulator(tmp_path):
    """Scalars, histograms and images written without TF ops come back through TensorBoard's
    EventAccumulator with their values, kinds and plugin metadata (given once per tag)."""
    from tensorboard.backend.event_processing import event_accumulator

    writers = kbc.RunWriters(str(tmp_path))
    rgba = np.zeros((6, 10, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    for step in (1, 2):
        with writers.writing("train", step) as write:
            write.scalar("grad_norm/dense", 0.25 * step)
            write.histogram_buckets("activations/dense", [0.0, 1.0, 3.0], [4, step])
            write.image("figures/chart", rgba)
    writers.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    tensors = {tag: acc.Tensors(tag) for tag in acc.Tags()["tensors"]}
    assert [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in tensors["grad_norm/dense"]] == [(1, 0.25), (2, 0.5)]
    histogram = tensor_util.make_ndarray(tensors["activations/dense"][-1].tensor_proto)
    np.testing.assert_array_equal(histogram, [[0.0, 1.0, 4.0], [1.0, 3.0, 2.0]])
    width, height, png = tensor_util.make_ndarray(tensors["figures/chart"][0].tensor_proto)
    assert (int(width), int(height)) == (10, 6) and png.startswith(b"\x89PNG")
    plugins = {tag: acc.SummaryMetadata(tag).plugin_data.plugin_name for tag in tensors}
    assert plugins == {"grad_norm/dense": "scalars", "activations/dense": "histograms", "figures/chart": "images"}
    records = [r for path in sorted(glob.glob(str(tmp_path / "train" / "events.out.tfevents.*")))
               for r in event_file_loader.EventFileLoader(path).Load()]
    described = [v.tag for r in records for v in r.summary.value if v.metadata.plugin_data.plugin_name]
    assert sorted(described) == ["activations/dense", "figures/chart", "grad_norm/dense"]  # once each


def test_batch_metrics_at_an_epoch_end_are_the_train_values_not_validations(tmp_path):
    """Keras evaluates the validation data before on_epoch_end and resets the shared metrics;
    the batch_* scalars of the epoch's last step must still be the training ones."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.compile(keras.optimizers.SGD(0.01), LOSS, metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), np.arange(32) % 3
    x_val = 50 * rng.normal(size=(32, 4)).astype("float32")  # a validation loss far from the train loss
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x_val, y),
                        callbacks=[kbc.MetricsLogger(str(tmp_path), every=100)])
    values, _ = read_run(str(tmp_path / "train"))
    for epoch, step in ((0, 4), (1, 8)):
        assert scalar(values, "batch_loss", step) == pytest.approx(history.history["loss"][epoch], rel=1e-6)
        assert abs(history.history["val_loss"][epoch] - history.history["loss"][epoch]) > 1.0
