"""Issue 9: faults during training and bad inputs (in-process). Killed processes and concurrent
runs are in test_reliability_processes.py. Every event file is read back strictly (CRCs) and
with TensorBoard's own loader."""

from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_bn import callbacks as kbc  # noqa: E402
from keras_bn.callbacks import bn_check  # noqa: E402
from keras_bn.report import read_run  # noqa: E402
from keras_bn.sanity import LossGuard  # noqa: E402
from tests._events import strict_steps, tensorboard_values as loader_values, write_scalar_events  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error:keras_bn:RuntimeWarning")
LOSS = "sparse_categorical_crossentropy"


def mlp(width=6, lr=0.05):
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(width, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(hidden))
    model.compile(keras.optimizers.SGD(lr), LOSS)
    return model


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype("float32"), np.arange(n) % 3


def steps_of(values, tag):
    return [s for s, _ in values[tag]]


# --- loss turning NaN mid-run -----------------------------------------------------------------
@pytest.mark.parametrize("stopper", ["terminate_on_nan", "loss_guard"])
def test_nan_mid_run_is_counted_and_the_run_ends_as_the_stopper_decides(tmp_path, stopper):
    model = mlp()
    x, y = data(32)
    x[12:16] = np.inf  # the 4th batch of 4: loss and gradients turn NaN at step 4
    stop = keras.callbacks.TerminateOnNaN() if stopper == "terminate_on_nan" else LossGuard(verbose=False)
    callbacks = kbc.diagnostics(str(tmp_path), probe=data(8, 1)[0], every=1, figures=False,
                                layers=["hidden", "out"]) + [stop]
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
    assert int(model.optimizer.iterations.numpy()) == 4  # stopped right after the bad step
    assert len(history.history["loss"]) == 1 and not np.isfinite(history.history["loss"][0])
    if stopper == "loss_guard":
        assert stop.stopped_step == 4 and "nan" in stop.reason.lower()
    steps, tail = strict_steps(tmp_path / "train")
    assert tail == 0  # closed cleanly at train end: no partial record
    values = loader_values(tmp_path / "train")
    assert steps_of(values, "nonfinite/grad_steps") == [1, 2, 3, 4]
    assert [float(v) for _, v in values["nonfinite/grad_steps"]] == [0, 0, 0, 1]
    # After the NaN update every weight is NaN: all 8 x 3 probe outputs are non-finite. What ReLU
    # makes of NaN depends on the CPU kernel: oneDNN's gives 0 (every hidden unit reads as dead),
    # Eigen's (oneDNN off) keeps NaN, and then no finite value is left to count (NaN, never 0).
    assert [float(v) for _, v in values["nonfinite/activations/out"]] == [0, 0, 0, 24]
    hidden_nonfinite = float(values["nonfinite/activations/hidden"][-1][1])
    last_dead = float(values["dead_fraction/hidden"][-1][1])
    assert (last_dead == 1.0 and hidden_nonfinite == 0) or (math.isnan(last_dead) and hidden_nonfinite == 8 * 6)
    assert float(values["dead_fraction/hidden"][0][1]) < 1.0
    assert sorted(strict_steps(tmp_path / "train")[0]["grad_global/norm"]) == [1, 2, 3, 4]
    assert read_run(tmp_path)["grad_global/norm"][-1][0] == 4  # TensorBoard's EventAccumulator agrees


# --- exceptions inside fit --------------------------------------------------------------------
class RaiseAtBatch(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 4:
            raise RuntimeError("user callback failed")


def test_exception_in_user_callback_leaves_readable_events_within_flush_secs(tmp_path):
    model = mlp()
    x, y = data(32)
    callbacks = kbc.diagnostics(str(tmp_path), every=1, figures=False, flush_secs=0.2)
    with pytest.raises(RuntimeError, match="user callback failed"):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=callbacks + [RaiseAtBatch()])
    try:
        time.sleep(0.6)  # the flush timer: no more writes, no close, no epoch end
        steps, tail = strict_steps(tmp_path / "train")
        assert tail == 0
        assert sorted(steps["grad_global/norm"]) == [1, 2, 3, 4]  # logged before step 5 ran
        assert steps_of(loader_values(tmp_path / "train"), "batch_loss") == [1, 2, 3, 4]
    finally:
        kbc.close_all_writers()


def raising_generator(x, y, batches_before_error=4):
    for i in range(batches_before_error):
        yield x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]
    raise ValueError("data pipeline failed")


def raising_dataset(x, y):
    def check(xb, yb):
        tf.debugging.assert_less(tf.reduce_max(xb), 100.0, message="data pipeline failed")
        return xb, yb

    x = x.copy()
    x[16:20] = 1e3  # the 5th batch fails the assertion
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4).map(check)


@pytest.mark.parametrize("pipeline", ["generator", "tf.data"])
def test_exception_from_the_data_pipeline_closes_the_writers(tmp_path, pipeline):
    model = mlp()
    x, y = data(32)
    source = raising_generator(x, y) if pipeline == "generator" else raising_dataset(x, y)
    callbacks = kbc.diagnostics(str(tmp_path), probe=x[:8], every=1, figures=False, flush_secs=60.0)
    with pytest.raises(Exception, match="data pipeline failed"):
        model.fit(source, epochs=1, steps_per_epoch=8 if pipeline == "generator" else None, verbose=0,
                  callbacks=callbacks)
    # The 5th call raised (Keras' iteration counter already counts it); 4 steps were logged.
    assert int(model.optimizer.iterations.numpy()) in (4, 5)
    assert "apply" not in vars(model.optimizer)  # the failure handler restored the optimizer
    # No sleep: the failing step itself closed (and so flushed) the writers.
    steps, tail = strict_steps(tmp_path / "train")
    assert tail == 0
    assert sorted(steps["grad_global/norm"]) == [1, 2, 3, 4]
    assert sorted(steps["activation_mean/hidden"]) == [1, 2, 3, 4]


# --- resuming ---------------------------------------------------------------------------------
def test_resume_with_initial_epoch_continues_steps_without_overwriting(tmp_path):
    x, y = data(32)
    model = mlp()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
              callbacks=kbc.diagnostics(str(tmp_path / "run"), probe=x[:8], every=2, figures=False))
    model.save(tmp_path / "ckpt.keras")
    before = loader_values(tmp_path / "run" / "train")
    # A resumed script: fresh process state, restored model (with its optimizer), new callbacks.
    keras.backend.clear_session()
    restored = keras.models.load_model(tmp_path / "ckpt.keras")
    assert int(restored.optimizer.iterations.numpy()) == 8
    restored.fit(x, y, batch_size=8, epochs=4, initial_epoch=2, verbose=0, shuffle=False,
                 callbacks=kbc.diagnostics(str(tmp_path / "run"), probe=x[:8], every=2, figures=False))
    steps, tail = strict_steps(tmp_path / "run" / "train")
    assert tail == 0
    assert sorted(steps["grad_global/norm"]) == [2, 4, 6, 8, 10, 12, 14, 16]  # no step twice
    assert sorted(steps["epoch_loss"]) == [0, 1, 2, 3]
    after = loader_values(tmp_path / "run" / "train")
    for tag in ("grad_global/norm", "activation_mean/hidden"):  # the first run's values are intact
        assert [(s, float(v)) for s, v in after[tag] if s <= 8] == [(s, float(v)) for s, v in before[tag]]
    accumulated = read_run(tmp_path / "run")  # TensorBoard's EventAccumulator keeps both halves
    assert [s for s, _ in accumulated["grad_global/norm"]] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [s for s, _ in accumulated["epoch_loss"]] == [0, 1, 2, 3]


def test_resume_without_the_optimizer_warns_once_and_continues_after_the_last_logged_step(tmp_path):
    """Issue 16 item 6: weights restored, optimizer not (iterations 0), initial_epoch=2, same log:
    without the offset steps 2-8 would be written twice."""
    x, y = data(32)
    model = mlp()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
              callbacks=kbc.diagnostics(str(tmp_path / "run"), probe=x[:8], every=2, figures=False))
    weights = model.get_weights()
    keras.backend.clear_session()
    restored = mlp()
    restored.set_weights(weights)  # the weights only: a fresh optimizer
    assert int(restored.optimizer.iterations.numpy()) == 0
    with pytest.warns(UserWarning) as caught:
        restored.fit(x, y, batch_size=8, epochs=4, initial_epoch=2, verbose=0, shuffle=False,
                     callbacks=kbc.diagnostics(str(tmp_path / "run"), probe=x[:8], every=2, figures=False))
    resumed = [str(w.message) for w in caught if "already holds steps" in str(w.message)]
    assert len(resumed) == 1 and "\n" not in resumed[0], resumed
    assert repr(str(tmp_path / "run")) in resumed[0] and "up to 8" in resumed[0] and "at step 9" in resumed[0]
    assert [w.filename for w in caught if "already holds steps" in str(w.message)] == [__file__]
    steps, tail = strict_steps(tmp_path / "run" / "train")
    assert tail == 0
    assert sorted(steps["grad_global/norm"]) == [2, 4, 6, 8, 10, 12, 14, 16]  # no step twice
    assert sorted(steps["batch_loss"]) == sorted(set(steps["batch_loss"]))
    assert sorted(steps["epoch_loss"]) == [0, 1, 2, 3]  # epochs as Keras counts them
    assert events.read_run_details(tmp_path / "run").problems == []  # no "two runs interleaved"


def test_last_logged_step_reads_only_what_was_appended(tmp_path):
    folder = tmp_path / "train"
    write_scalar_events(folder, {"grad_norm/a": [(3, 1.0), (7, 2.0)], "epoch_loss": [(50, 0.1)]})
    assert events.last_step(folder) == 7  # epoch_* scalars are indexed by epoch, not by step
    writer = events.EventFileWriter(folder)
    writer.add_scalars(12, {"grad_norm/a": 3.0})
    writer.flush()
    assert events.last_step(folder) == 12
    writer.add_scalars(15, {"grad_norm/a": 4.0})
    writer.close()
    assert events.last_step(folder) == 15
    assert events.last_step(tmp_path / "empty") is None


def test_fit_returns_before_the_train_end_figure_which_readers_then_wait_for(tmp_path, monkeypatch):
    """Issue 17 item 9: the train-end figure is drawn after ``fit`` returned; keras-bn's readers
    (and `events.finish_writes`) wait for it, and the files close after it."""
    import threading

    gate, original, drawn = threading.Event(), kbc.GradientNorms._draw, []

    def gated(self, step):
        gate.wait(60)
        original(self, step)
        drawn.append(step)

    monkeypatch.setattr(kbc.GradientNorms, "_draw", gated)
    x, y = data(32)
    callback = kbc.GradientNorms(str(tmp_path), every=2, figures=True, figure_secs=3600)
    mlp().fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    assert drawn == []  # fit did not wait for the figure
    on_disk = {v.tag for path in events.event_files(tmp_path / "train") for _, e in events.iter_events(path)
               for v in e.summary.value}
    assert "grad_global/norm" in on_disk and "figures/grad_norms" not in on_disk  # flushed but for the figure
    gate.set()
    steps, tail = strict_steps(tmp_path / "train")  # waits for the figure
    assert drawn == [4] and steps["figures/grad_norms"] == [4] and tail == 0
    assert not callback.writers._writers  # closed once the figure was written


# --- unwritable log directory ------------------------------------------------------------------
def test_unwritable_log_dir_fails_before_the_first_step(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file")
    with pytest.raises(ValueError, match="is a file, not a directory") as raised:
        kbc.diagnostics(str(blocker / "run"), every=1)
    assert "log_dir=" in str(raised.value)
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "train").write_text("a file where the train run goes")
    with pytest.raises(ValueError, match="train"):
        kbc.diagnostics(str(tmp_path / "run2"))
    # A single callback made before the folder broke: ValueError at train begin, no step taken.
    model = mlp()
    callback = kbc.GradientNorms(str(tmp_path / "later" / "run"), every=1, figures=False)
    (tmp_path / "later").write_text("now a file")
    x, y = data(8)
    with pytest.raises(ValueError, match="cannot be created"):
        model.fit(x, y, batch_size=4, verbose=0, callbacks=[callback])
    assert int(model.optimizer.iterations.numpy()) == 0


# --- bad inputs and unusual models ------------------------------------------------------------
def test_bad_probe_fails_when_fit_starts_with_the_expected_shape_or_dtype(tmp_path):
    x, y = data(8)
    with pytest.raises(TypeError, match=r"probe dtype=<U1"):
        kbc.diagnostics(str(tmp_path), probe=np.full((4, 4), "a"))
    with pytest.raises(TypeError, match=r"probe dtype=complex64"):
        kbc.ActivationStats(str(tmp_path), probe=x.astype(np.complex64))
    model = mlp()
    with pytest.raises(ValueError, match=r"expected a batch shaped \(None, 4\).*received \(8, 3\)"):
        model.fit(x, y, verbose=0, callbacks=kbc.diagnostics(str(tmp_path), probe=x[:, :3], every=1))
    assert int(model.optimizer.iterations.numpy()) == 0
    with pytest.raises(ValueError, match=r"received \(4,\)"):
        model.fit(x, y, verbose=0, callbacks=kbc.diagnostics(str(tmp_path), probe=x[0], every=1))


def test_multi_input_multi_output_model_with_a_dict_probe_in_any_key_order(tmp_path):
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    left = keras.layers.Dense(5, activation="relu", name="left")(a)
    right = keras.layers.Dense(2, activation="tanh", name="right")(b)
    joined = keras.layers.Concatenate(name="join")([left, right])
    model = keras.Model([a, b], [keras.layers.Dense(3, activation="softmax", name="cls")(joined),
                                 keras.layers.Dense(1, name="reg")(joined)])
    model.compile(keras.optimizers.SGD(0.01), [LOSS, "mse"])
    rng = np.random.default_rng(2)
    xa, xb = rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")
    probe = {"b": xb[:8], "a": xa[:8]}  # not in the model's input order
    callbacks = kbc.diagnostics(str(tmp_path), probe=probe, every=1, figures=False)
    model.fit([xa, xb], [np.arange(16) % 3, np.zeros((16, 1))], batch_size=8, epochs=1, verbose=0,
              callbacks=callbacks)
    values = loader_values(tmp_path / "train")
    expected_left = keras.Model(a, left)(xa[:8]).numpy()
    expected_right = keras.Model(b, right)(xb[:8]).numpy()
    assert float(values["activation_mean/left"][-1][1]) == pytest.approx(expected_left.mean(), rel=1e-5)
    assert float(values["activation_mean/right"][-1][1]) == pytest.approx(expected_right.mean(), rel=1e-5, abs=1e-7)
    assert {"grad_norm/left", "grad_norm/right", "grad_norm/cls", "grad_norm/reg"} <= set(values)
    with pytest.raises(ValueError, match=r"dict keys must be the model's input names \['a', 'b'\]"):
        model.fit([xa, xb], [np.arange(16) % 3, np.zeros((16, 1))], verbose=0,
                  callbacks=kbc.diagnostics(str(tmp_path / "bad"), probe={"a": xa, "c": xb}))


def test_model_without_relu_or_tanh_watches_every_layer_with_weights(tmp_path):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, name="linear1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(hidden))
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    x, y = data(8)
    model.fit(x, y, verbose=0, callbacks=kbc.diagnostics(str(tmp_path), probe=x, every=1, figures=False))
    tags = set(loader_values(tmp_path / "train"))
    assert {t for t in tags if t.startswith("activation_mean/")} == {"activation_mean/linear1", "activation_mean/out"}
    assert not any(t.startswith(("dead_fraction/", "zero_fraction/", "saturation/")) for t in tags)
    # softmax counts as neither family: a reduced set (mean, std, histogram, non-finite count).


def test_model_without_trainable_weights_writes_no_gradient_number_and_says_why(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="frozen", trainable=False)(inputs))
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    x, y = data(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", "The model does not have any trainable weights")
        model.fit(x, y, batch_size=4, verbose=0, callbacks=kbc.diagnostics(str(tmp_path), probe=x, every=1, figures=False))
    assert [str(w.message) for w in caught if "no trainable weights" in str(w.message)]
    values = loader_values(tmp_path / "train")
    assert not any(t.startswith(("grad_", "update_ratio/")) for t in values)
    assert "activation_mean/frozen" in values  # it still has (frozen) weights to watch
    no_weights = keras.Model(inputs, keras.layers.Softmax(name="softmax")(inputs))
    no_weights.compile(keras.optimizers.SGD(0.01), LOSS)
    with pytest.raises(ValueError, match="found no layer to watch"):
        no_weights.fit(x, y, verbose=0, callbacks=kbc.diagnostics(str(tmp_path / "nw"), probe=x))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.hidden = keras.layers.Dense(6, activation="relu")
        self.out = keras.layers.Dense(3, activation="softmax")

    def call(self, inputs):
        return self.out(self.hidden(inputs))


def test_subclassed_model_gets_full_stats_once_built(tmp_path):
    x, y = data(8)
    model = Subclassed()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    # Unbuilt at train begin (no weights until the first call): a clear error, not empty logs.
    with pytest.raises(ValueError, match=r"needs a built model.*model\(x\[:1\]\)"):
        model.fit(x, y, verbose=0, callbacks=kbc.diagnostics(str(tmp_path / "b"), every=1))
    assert int(model.optimizer.iterations.numpy()) == 0
    model(x[:1])
    model.fit(x, y, batch_size=4, verbose=0, callbacks=kbc.diagnostics(str(tmp_path / "c"), every=1, figures=False))
    values = loader_values(tmp_path / "c" / "train")
    assert steps_of(values, "grad_global/norm") == [1, 2]
    assert {t for t in values if t.startswith("grad_norm/")} == {"grad_norm/dense", "grad_norm/dense_1"}
    assert {t for t in values if t.startswith("update_ratio/")} == {"update_ratio/dense", "update_ratio/dense_1"}
    # With a probe it gets activation statistics too (their values: tests/test_activation_stats.py).
    model.fit(x, y, batch_size=4, verbose=0, callbacks=kbc.diagnostics(str(tmp_path / "a"), probe=x, every=1, figures=False))
    values = loader_values(tmp_path / "a" / "train")
    assert {t for t in values if t.startswith("dead_fraction/")} == {"dead_fraction/dense"}


# --- batch normalization with batch size 1 -------------------------------------------------------
def bn_model():
    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(5, name="dense")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(hidden))
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    return model


@pytest.mark.parametrize("samples,batch_size,warns", [(6, 1, True), (9, 4, True), (8, 4, False)])
def test_batch_norm_on_one_sample_warns_once_naming_the_layer(tmp_path, samples, batch_size, warns):
    x, y = data(samples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bn_model().fit(x, y, batch_size=batch_size, epochs=2, verbose=0, shuffle=False,
                       callbacks=kbc.diagnostics(str(tmp_path), every=2, figures=False))
    messages = [str(w.message) for w in caught if str(w.message).startswith("keras_bn: BatchNormalization")]
    assert len(messages) == (1 if warns else 0)
    if warns:
        assert "'bn'" in messages[0] and "variance" in messages[0]
    # The check never syncs per step: it does not override the batch-end hook.
    assert kbc.BatchNormCheck.on_train_batch_end is keras.callbacks.Callback.on_train_batch_end



@pytest.mark.parametrize("size,warns", [(1, True), (3, False)])
def test_batch_norm_check_on_conv_maps_counts_pixels_too(tmp_path, size, warns):
    """With batch size 1, a 1x1 feature map is one value per channel (warns); a 3x3 map is 9
    (no warning, and the static shape says so: the step carries no check op for that layer)."""
    inputs = keras.Input((size, size, 2))
    hidden = keras.layers.BatchNormalization(name="conv_bn")(keras.layers.Conv2D(4, 1, name="conv")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(hidden)))
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    x = np.random.default_rng(0).normal(size=(4, size, size, 2)).astype("float32")
    y = np.arange(4) % 3
    check = kbc.BatchNormCheck(str(tmp_path), every=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[check])
    messages = [str(w.message) for w in caught if str(w.message).startswith("keras_bn: BatchNormalization")]
    assert len(messages) == (1 if warns else 0)
    assert check.counts()["conv_bn"] == (1 if warns else bn_check.NO_COUNT)

# --- memory: streamed probe ---------------------------------------------------------------------
def test_large_probe_is_streamed_in_chunks_with_the_same_statistics(tmp_path):
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.ReLU(name="relu")(keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs))
    h = keras.layers.Activation("tanh", name="tanh")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(h)))
    x = np.random.default_rng(0).normal(size=(50, 6, 6, 2)).astype("float32")
    x[3] = np.inf  # non-finite values are counted the same way in both paths
    one = kbc.ActivationStats(str(tmp_path), x, figures=False)
    one.set_model(model)
    streamed = kbc.ActivationStats(str(tmp_path), x, figures=False, max_probe_mb=0.01)
    streamed.set_model(model)
    assert one._chunk_rows == 50 and 1 < streamed._chunk_rows < 50  # several chunks
    a, b = one._results(), streamed._results()
    assert a.keys() == b.keys() == {"relu", "tanh"}
    for path in a:
        assert a[path].keys() == b[path].keys()
        for name in a[path]:
            for got, want in zip(np.atleast_1d(b[path][name]) if name != "histogram" else b[path][name],
                                 np.atleast_1d(a[path][name]) if name != "histogram" else a[path][name]):
                np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                           rtol=1e-5, atol=1e-6, err_msg=f"{path} {name}")
    assert float(a["relu"]["nonfinite"]) > 0  # the inf sample: counted, then dropped, in both paths


# --- a full disk (issue 16.1) -----------------------------------------------------------------
import errno  # noqa: E402
import subprocess  # noqa: E402

from keras_bn import events  # noqa: E402
from keras_bn.events import records  # noqa: E402
from keras_bn.callbacks._writer import RunWriters  # noqa: E402


class FakeDisk:
    """Event files on a disk with `space` bytes left: a write that does not fit is written in
    part (as write(2) does), the next one fails with ENOSPC, as does creating a file when full."""

    def __init__(self, space: int):
        self.space = space
        self.write_calls = 0

    def open(self, path):
        if self.space <= 0:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        disk, real = self, open(path, "ab", buffering=0)

        class File:
            def write(self, data):
                disk.write_calls += 1
                if disk.space <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                n = min(len(data), disk.space)
                disk.space -= n
                return real.write(bytes(data[:n]))

            def fileno(self):
                return real.fileno()

            def close(self):
                real.close()

        return File()


def write_steps(writers, steps):
    for step in steps:
        with writers.writing("train", step) as write:
            write.scalar("grad_norm/dense", step / 10)
        writers.flush()


def readable_steps(run_dir):
    """Steps of grad_norm/dense on disk; every record whole (no corrupt or truncated one)."""
    run = events.read_run_details(run_dir)
    assert run.problems == []
    return run.scalars["grad_norm/dense"].steps.tolist() if "grad_norm/dense" in run.scalars else []


def test_a_full_disk_warns_once_keeps_whole_records_and_resumes_when_space_returns(tmp_path, monkeypatch):
    disk = FakeDisk(space=700)  # room for the first few records, then a record cut part way
    monkeypatch.setattr(records, "_open_for_append", disk.open)
    monkeypatch.setattr(RunWriters, "MIN_BACKOFF_SECS", 0.0)
    writers = RunWriters(str(tmp_path), flush_secs=60)
    with pytest.warns(RuntimeWarning) as caught:
        write_steps(writers, range(1, 21))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "stopped logging" in messages[0] and "No space left on device" in messages[0]
    on_disk = readable_steps(tmp_path)
    assert 1 <= len(on_disk) < 20 and on_disk == list(range(1, len(on_disk) + 1))  # a whole prefix
    disk.space = 10**6  # space returns
    with pytest.warns(RuntimeWarning, match="resumed logging") as caught:
        write_steps(writers, [21])
    assert len(caught) == 1
    writers.close()
    assert readable_steps(tmp_path) == list(range(1, 22))  # kept in memory meanwhile: nothing lost


def test_after_a_disk_failure_writes_wait_for_the_back_off(tmp_path, monkeypatch):
    disk = FakeDisk(space=300)
    monkeypatch.setattr(records, "_open_for_append", disk.open)
    monkeypatch.setattr(RunWriters, "MIN_BACKOFF_SECS", 1e6)
    writers = RunWriters(str(tmp_path), flush_secs=60)
    with pytest.warns(RuntimeWarning, match="stopped logging"):
        write_steps(writers, range(1, 6))
        calls = disk.write_calls
        write_steps(writers, range(6, 30))
    assert disk.write_calls == calls  # no write attempt per flush while the back-off runs
    assert writers.logging_stopped.startswith("OSError")
    with pytest.warns(RuntimeWarning, match="could not write the last"):
        writers.close()  # one last try at close; what it could not write is named


def test_a_disk_full_from_the_start_leaves_no_event_file_and_fit_runs_to_the_end(tmp_path, monkeypatch):
    disk = FakeDisk(space=0)
    monkeypatch.setattr(records, "_open_for_append", disk.open)
    model = mlp()
    x, y = data(32)
    with pytest.warns(RuntimeWarning) as caught:
        model.fit(x, y, batch_size=4, epochs=3, verbose=0,
                  callbacks=kbc.diagnostics(str(tmp_path), probe=x[:8], every=1, figures=False))
    assert int(model.optimizer.iterations.numpy()) == 24  # training was never the casualty
    stopped = [w for w in caught if "stopped logging" in str(w.message)]
    assert len(stopped) == 1
    assert events.event_files(tmp_path / "train") == [] and events.event_files(tmp_path / "validation") == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the simulated ENOSPC tests cover the behaviour)")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder) -> str:
    """Fill the file system of `folder` to the last byte; returns the filler's path."""
    path = os.path.join(folder, "filler")
    with open(path, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return path


class FreeSpaceAtEpoch(keras.callbacks.Callback):
    def __init__(self, path, epoch):
        super().__init__()
        self.path, self.epoch = path, epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            os.remove(self.path)


def test_on_a_real_full_tmpfs_training_runs_on_and_logging_resumes_when_space_returns(small_tmpfs, monkeypatch):
    monkeypatch.setattr(RunWriters, "MIN_BACKOFF_SECS", 0.0)
    log_dir = small_tmpfs / "run"
    filler = fill(small_tmpfs)
    model = mlp()
    x, y = data(32)
    callbacks = kbc.diagnostics(str(log_dir), probe=x[:8], every=1, figures=False)
    with pytest.warns(RuntimeWarning) as caught:
        model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False,
                  callbacks=[FreeSpaceAtEpoch(filler, 2)] + callbacks)
    assert int(model.optimizer.iterations.numpy()) == 24
    messages = [str(w.message) for w in caught]
    assert sum("stopped logging" in m for m in messages) == 1, messages
    assert sum("resumed logging" in m for m in messages) == 1, messages
    run = events.read_run_details(log_dir)
    assert run.problems == []
    assert run.scalars["grad_global/norm"].steps.tolist() == list(range(1, 25))  # nothing was lost
    assert run.scalars["epoch_loss"].steps.tolist() == [0, 1, 2]


# --- bounded writer options (issue 16.2, writer side) -----------------------------------------
@pytest.mark.parametrize("flush_secs", [float("inf"), float("nan"), 0, -1.0, 3601.0, True, "5"])
def test_flush_secs_outside_its_range_is_refused_at_construction(tmp_path, flush_secs):
    with pytest.raises((ValueError, TypeError), match="flush_secs"):
        kbc.diagnostics(str(tmp_path), flush_secs=flush_secs)
    with pytest.raises(ValueError, match=r"`flush_secs` must be a number in \(0, 3600\] seconds"):
        RunWriters(str(tmp_path), flush_secs=flush_secs)
    assert RunWriters(str(tmp_path), flush_secs=3600).flush_secs == 3600.0  # the cap itself is allowed


@pytest.mark.parametrize("log_dir, message", [
    ("", "an empty path would write into the current directory"),
    ("logs/a\0b", "must not contain a NUL character"),
    ("/proc/x", "no folder can be made in '/proc'"),
])
def test_a_log_dir_that_cannot_be_a_run_folder_is_refused_at_construction(log_dir, message):
    from keras_bn.callbacks._runs import check_log_dir_now

    with pytest.raises(ValueError, match=message):
        check_log_dir_now(log_dir)
    with pytest.raises(ValueError, match=message):
        kbc.diagnostics(log_dir)


def test_the_writability_check_leaves_nothing_behind(tmp_path):
    from keras_bn.callbacks._runs import check_log_dir_now

    assert check_log_dir_now(tmp_path / "new" / "run") == str(tmp_path / "new" / "run")
    assert os.listdir(tmp_path) == []
