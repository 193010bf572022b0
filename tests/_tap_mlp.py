"""The small MLP, data and NumPy helpers the tap tests share (tests/test_taps.py, tests/test_backend_*_taps.py)."""

from __future__ import annotations

import keras
import numpy as np

import keras_bn

__all__ = ["LAYERS", "LOSS", "WrapsTheTrainFunction", "assert_batch_logs_are_those_fit_passes", "data",
           "fit_observed_and_plain_on_a_schedule", "layer_norms", "mlp", "users_train_function", "weights_of"]

LOSS = keras.losses.SparseCategoricalCrossentropy()
LAYERS = ["block1_dense", "block2_dense", "logits"]


def mlp(optimizer, seed=3, **compile_kwargs):
    """6-8-8-3: dense-relu, dense-relu, dense-softmax, compiled with `LOSS`."""
    keras.utils.set_random_seed(seed)
    model = keras_bn.build_dense((6,), [8, 8], 3, norm=None)
    model.compile(optimizer, LOSS, **compile_kwargs)
    return model


def data(n=16, seed=0, label_dtype="int32"):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), (np.arange(n) % 3).astype(label_dtype)


def weights_of(model):
    return [keras.ops.convert_to_numpy(v.value).copy() for v in model.trainable_variables]


def layer_norms(model, grads):
    """Per-layer L2 norms of `grads` (one per trainable variable, in model order), in NumPy."""
    norms = {}
    for variable, grad in zip(model.trainable_variables, grads):
        layer = variable.path.split("/")[0]
        norms[layer] = norms.get(layer, 0.0) + float(np.sum(grad ** 2))
    return {layer: np.sqrt(value) for layer, value in norms.items()}


def fit_observed_and_plain_on_a_schedule(log_dir, label_dtype="int32") -> str:
    """Fit the MLP twice, bare and with the preset (every 2 steps, into `log_dir`), on SGD with
    an ExponentialDecay schedule halving the rate each step (2 epochs of 4 batches); assert that
    observing changed neither the weights nor the schedule's rate. Returns the train run dir."""
    import pytest
    from keras_bn import callbacks as kbc

    x, y = data(32, label_dtype=label_dtype)

    def trained(callbacks):
        schedule = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=1, decay_rate=0.5)
        model = mlp(keras.optimizers.SGD(schedule))
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        return model

    plain = trained([])
    observed = trained(kbc.diagnostics(str(log_dir), every=2, figures=False, doctor=False))
    for got, want in zip(weights_of(observed), weights_of(plain)):
        np.testing.assert_array_equal(got, want)
    assert float(keras.ops.convert_to_numpy(observed.optimizer.learning_rate)) == pytest.approx(0.2 * 0.5 ** 8)
    return str(log_dir / "train")


def users_train_function(model, wraps: bool = False):
    """A train function of the user's own on `model`: a wrapper counting its calls around one
    Keras made (dressed as Keras' own by ``functools.wraps`` with `wraps`). Returns it and its
    list of calls."""
    import functools

    model.make_train_function()
    keras_function, calls = model.train_function, []

    def train_function(*args, **kwargs):
        calls.append(1)
        return keras_function(*args, **kwargs)

    model.train_function = functools.wraps(keras_function)(train_function) if wraps else train_function
    return model.train_function, calls


class WrapsTheTrainFunction(keras.callbacks.Callback):
    """A user's callback that puts its own wrapper over whatever train function is installed
    (unless its wrapper is on top already), as a timing or profiling callback does."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def on_train_batch_begin(self, batch, logs=None):
        inner = self.model.train_function
        if getattr(inner, "wrapped_by", None) is self:
            return

        def timed(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        timed.wrapped_by = self
        self.model.train_function = timed


class _LogsPassed(keras.callbacks.Callback):
    """What ``fit`` passes to ``on_train_batch_end``, by optimizer step (what Keras' TensorBoard logs)."""

    def __init__(self):
        super().__init__()
        self.by_step = {}

    def on_train_batch_end(self, batch, logs=None):
        self.by_step[len(self.by_step) + 1] = dict(logs)


def assert_batch_logs_are_those_fit_passes(log_dir):
    """Fit the MLP 2 epochs of 4 batches with `MetricsLogger` (every 2 steps) and a
    ``compute_metrics`` that adds an entry of its own (``pred_max``, not a metric: only the
    step's logs hold it); assert that every ``batch_*`` value written is the one ``fit`` passed
    to ``on_train_batch_end`` at that step (steps 2 and 6 from the step's logs, 4 and 8 from the
    epoch's)."""
    from keras_bn import callbacks as kbc
    from tests._events import scalar_series

    class ExtraLogs(keras.Model):
        def compute_metrics(self, x, y, y_pred, sample_weight=None):
            return {**super().compute_metrics(x, y, y_pred, sample_weight), "pred_max": keras.ops.max(y_pred)}

    keras.utils.set_random_seed(3)
    base = keras_bn.build_dense((6,), [8], 3, norm=None)
    model = ExtraLogs(base.input, base.output)
    model.compile(keras.optimizers.SGD(0.1), LOSS, metrics=["accuracy"])
    x, y = data(32)
    passed = _LogsPassed()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[kbc.MetricsLogger(str(log_dir), every=2), passed])
    run = str(log_dir / "train")
    written = {name: scalar_series(run, f"batch_{name}") for name in ("loss", "accuracy", "pred_max")}
    for name, series in written.items():
        assert sorted(series) == [2, 4, 6, 8], name
        for step, value in series.items():
            assert value == np.float32(passed.by_step[step][name]), (name, step)
    assert written["loss"][2] != written["loss"][6]
