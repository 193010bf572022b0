"""The live Doctor: prints each finding once, writes the Text dashboard and report.md (also when
training dies), stops on request, and gives any model style the same findings."""

import math

import keras
import numpy as np
import pytest

import keras_bn
from keras_bn import doctor
from keras_bn.callbacks import Doctor
from tests._events import texts


def blobs(n=256, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, np.argmax(x @ rng.normal(size=(features, classes)), axis=1)


def head_x100(features=8, classes=3):
    inputs = keras.Input((features,))
    h = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    logits = keras.layers.Rescaling(100.0)(keras.layers.Dense(classes, name="head")(h))
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def text_summaries(folder):
    return texts(folder, "doctor/findings")


def test_finding_printed_once_written_as_text_and_to_report_md(tmp_path, capsys):
    x, y = blobs()
    model = head_x100()
    cbs = keras_bn.callbacks.diagnostics(str(tmp_path), every=4, figures=False)
    assert isinstance(cbs[-1], Doctor)
    for epoch in range(3):  # a recipe fitting one epoch at a time: one Doctor across the fits
        model.fit(x, y, batch_size=32, epochs=epoch + 1, initial_epoch=epoch, verbose=0, callbacks=cbs,
                  validation_data=(x[:64], y[:64]))  # its epoch_* scalars are written at x = epoch
    lines = [line for line in capsys.readouterr().out.splitlines() if "initial loss" in line]
    assert len(lines) == 1 and lines[0].startswith("step 1  initial loss ")
    texts = text_summaries(tmp_path / "doctor")
    assert [step for step, text in texts if "`initial_loss`" in text] == [1]
    steps = [step for step, _ in texts]  # at optimizer steps, never backwards (TensorBoard would drop
    assert steps == sorted(steps) and 1 <= steps[0] and steps[-1] <= 24  # what follows a step back)
    report = (tmp_path / "report.md").read_text()
    assert "| warning | initial_loss |  | 1 | initial loss" in report
    assert "Up to optimizer step 24." in report
    facts = doctor.RunFacts.load(tmp_path)
    assert facts.loss == {"kind": "categorical", "num_classes": 3}
    assert facts.epoch_starts == [0, 8, 16] and facts.epoch_ends == {"0": 8, "1": 16, "2": 24}
    # the Dense before the weightless Rescaling and softmax is the head, never a hidden layer
    assert [layer["name"] for layer in facts.layers if layer["output"]] == ["head", "softmax"]
    offline = doctor.diagnose(tmp_path)
    assert {f.key for f in offline if f.severity != "info"} == {f.key for f in cbs[-1].findings if f.severity != "info"}


class Boom(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 4:
            raise RuntimeError("user callback failed at step 5")


def test_report_md_is_written_when_training_dies(tmp_path):
    x, y = blobs()
    model = head_x100()
    cbs = keras_bn.callbacks.diagnostics(str(tmp_path), every=100, figures=False)
    with pytest.raises(RuntimeError, match="step 5"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[*cbs, Boom()])
    report = (tmp_path / "report.md").read_text()
    assert "initial_loss" in report


def test_stop_on_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"`stop_on` must hold rule ids .* Received: stop_on=\('divergin',\)"):
        Doctor(str(tmp_path), stop_on=("divergin",))
    cb = Doctor(str(tmp_path), stop_on="diverging")
    assert cb.stop_on == {"diverging", "nonfinite_loss"}
    assert cb.get_config() == {"log_dir": str(tmp_path), "every": 100, "stop_on": ["diverging"], "verbose": True}
    x, y = blobs()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(1e4), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cbs = keras_bn.callbacks.diagnostics(str(tmp_path / "run"), every=2, figures=False, doctor=False)
    live = Doctor(str(tmp_path / "run"), every=2, stop_on=("diverging",), writers=cbs[0].writers)
    history = model.fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[*cbs, live])
    assert live.stopped_by.rule in ("diverging", "nonfinite_loss")
    assert len(history.history["loss"]) == 1  # stopped within the first epoch (32 steps)


class ZeroInitNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden1 = keras.layers.Dense(16, activation="relu", kernel_initializer="zeros", name="hidden1")
        self.hidden2 = keras.layers.Dense(16, activation="relu", kernel_initializer="zeros", name="hidden2")
        self.head = keras.layers.Dense(3, kernel_initializer="zeros", name="head")

    def call(self, x):
        return self.head(self.hidden2(self.hidden1(x)))


@pytest.mark.parametrize("style", ["sequential", "subclassed"])
def test_users_own_models_get_the_same_findings(tmp_path, style):
    x, y = blobs()
    if style == "subclassed":
        model = ZeroInitNet()
        model(x[:1])
    else:
        model = keras.Sequential([keras.Input((8,)),
                                  keras.layers.Dense(16, activation="relu", kernel_initializer="zeros", name="hidden1"),
                                  keras.layers.Dense(16, activation="relu", kernel_initializer="zeros", name="hidden2"),
                                  keras.layers.Dense(3, kernel_initializer="zeros", name="head")])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cbs = keras_bn.callbacks.diagnostics(str(tmp_path), every=4, figures=False)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=cbs)
    found = {(f.rule, f.layer) for f in doctor.diagnose(tmp_path)}
    assert {("no_gradient", "hidden1"), ("no_gradient", "hidden2")} <= found
    assert ("no_gradient", "head") not in found  # the head (bias gradient only) is the output layer
    # TensorBoard shows the last text of each step: it lists every finding first seen there.
    shown = "\n".join(dict(text_summaries(tmp_path / "doctor")).values())
    assert "`no_gradient`: step 4  hidden1" in shown and "`no_gradient`: step 4  hidden2" in shown
    facts = doctor.RunFacts.load(tmp_path)
    assert [layer["name"] for layer in facts.layers if layer["output"]] == ["head"]
    assert facts.loss["num_classes"] == 3 and math.isclose(
        doctor.initial_loss_verdict(math.log(3), facts.loss["num_classes"])[1], math.log(3))


# --- the Doctor's own scalars, each against an independent computation ------------------------
def bn_net(features=8, classes=3):
    inputs = keras.Input((features,))
    h = keras.layers.Dense(16, name="hidden")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)  # momentum 0.99: stale after a few steps
    h = keras.layers.Activation("relu", name="relu1")(h)
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="head")(h))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    return model


def test_doctor_scalars_equal_a_direct_computation(tmp_path):
    x, y = blobs(n=128)
    x = 3.0 + 2.0 * x  # far from BN's initial moving statistics (0, 1)
    model = bn_net()
    bn = model.get_layer("bn1")
    # The loss of step 1: the first batch (no shuffle) in training mode, before any update.
    saved = [v.numpy() for v in bn.non_trainable_variables]
    first_loss = float(np.mean(keras.ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(y[:32], model(x[:32], training=True)))))
    for variable, value in zip(bn.non_trainable_variables, saved):
        variable.assign(value)
    probe = x[:100]
    cbs = keras_bn.callbacks.diagnostics(str(tmp_path), probe=probe, every=2, figures=False)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=cbs)
    series = doctor.read_series(tmp_path)
    assert series["doctor/initial_loss"] == [(1, pytest.approx(first_loss, rel=1e-4))]
    # The BN gap at train end: the RMS difference of the layer's own training-mode and
    # inference-mode outputs on the probe's inputs to it, in units of gamma (its output std).
    step, gap = series["doctor/bn_gap/bn1"][-1]
    assert step == 4
    inputs = keras.Model(model.input, bn.input)(probe, training=False)
    saved = [v.numpy() for v in bn.non_trainable_variables]
    train_out = keras.ops.convert_to_numpy(bn(inputs, training=True))
    for variable, value in zip(bn.non_trainable_variables, saved):
        variable.assign(value)
    infer_out = keras.ops.convert_to_numpy(bn(inputs, training=False))
    expected = np.sqrt(np.mean(np.square((train_out - infer_out) / bn.gamma.numpy())))
    assert expected > 0.25  # stale: the rule's threshold is exceeded ...
    assert gap == pytest.approx(expected, rel=1e-3)  # ... and the Doctor's number is this one
    assert ("stale_bn_statistics", "bn1") in {f.key for f in cbs[-1].findings}
    # Its healthy twin: the remedy the finding names leaves no gap on the same data.
    from keras_bn.precise_bn import batchnorm_gaps

    keras_bn.recompute_batchnorm_statistics(model, probe)
    assert batchnorm_gaps(model, probe)["bn1"] < 1e-3
