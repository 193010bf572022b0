"""The babysitting checks of CS231n lecture 6 (SEEDS §7), as functions that measure and judge.

Before tuning anything, a classifier should pass four checks:

1. `check_initial_loss`: with small weights a softmax over C classes starts near
   ``ln(C)`` (2.30 for 10 classes); far above means the last layer's weights are too large.
   It measures the model's own compiled loss (or ``loss=``), knows `from_logits` (and fails a
   model whose outputs contradict it), and is "not applicable" for losses with no such
   reference value (regression: MSE, MAE, ...; see `expected_initial_loss`).
2. `check_overfit`: with no regularization the network fits a tiny subset (20 examples)
   to ~100% train accuracy and near-zero loss; failing means a bug, zero/constant init (no
   symmetry breaking) or a broken learning rate.
3. `check_regularization_raises_loss`: an L2 penalty on the kernels raises the loss the
   model trains on; if not, the loss does not see the model's regularizers.
4. `check_short_run`: one short epoch under `LossGuard` (stop once the loss passes 3x its
   start, or turns NaN) ends with a lower loss than it began; failing means a too-high
   learning rate.

Each returns a frozen record with ``.passed`` (None: not applicable) and the measured numbers;
`sanity_check` runs them all on data in any form ``fit`` takes and prints a pass/FAIL/n/a table.

Usage::

    report = keras_bn.sanity.sanity_check(lambda: keras_bn.build_dense((784,), [32, 32], 10), (x, y))
    report.passed
    model.fit(x, y, callbacks=[keras_bn.sanity.LossGuard(factor=3, log_dir="logs/run1")])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np

from keras_bn._doctor_loss import expected_initial_loss, initial_loss_verdict, loss_kind, loss_name
from keras_bn import _warnings
from keras_bn._sanity_results import (InitialLossResult, OverfitResult, RegularizationResult, SanityReport,
                                      ShortRunResult)
from keras_bn._training import compiled, is_compiled, make_model, take_arrays
from keras_bn._validation import check_float, check_positive_int

__all__ = ["InitialLossResult", "LossGuard", "OverfitResult", "RegularizationResult", "SanityReport",
           "ShortRunResult", "check_initial_loss", "check_overfit", "check_regularization_raises_loss",
           "check_short_run", "expected_initial_loss", "sanity_check"]

def _from_logits(loss) -> bool:
    return bool(loss.get_config().get("from_logits", False)) if isinstance(loss, keras.losses.Loss) else False


def _resolve_loss(model, loss, from_logits):
    """The loss object the check measures: `loss`, else the model's compiled one, else sparse CE."""
    if loss is None and is_compiled(model):
        loss = model.loss
        if isinstance(loss, (dict, list, tuple)):
            raise ValueError("check_initial_loss measures one loss; the model was compiled with one per output "
                             f"({loss!r}): pass `loss=` for the output to check. Received: loss=None")
    if loss is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=bool(from_logits))
    loss = keras.losses.get(loss)
    if from_logits is not None and isinstance(loss, keras.losses.Loss) and _from_logits(loss) != bool(from_logits):
        raise ValueError(f"`from_logits`={from_logits} contradicts the loss's own from_logits={_from_logits(loss)}; "
                         f"leave `from_logits` unset to use the loss as compiled. Received: from_logits={from_logits}")
    return loss


def _logits_mismatch(kind: str, from_logits: bool, pred: np.ndarray) -> str:
    """Why `pred` contradicts `from_logits` (empty when it does not)."""
    in_unit = bool(np.all((pred >= 0) & (pred <= 1)))
    sums_to_one = kind == "binary" or bool(np.allclose(pred.sum(axis=-1), 1.0, atol=1e-3))
    if not from_logits and not (in_unit and sums_to_one):
        what = "outside [0, 1]" if kind == "binary" or not in_unit else "rows that do not sum to 1"
        return (f"the outputs are logits ({what}) but the loss has from_logits=False: use "
                f"from_logits=True or a {'sigmoid' if kind == 'binary' else 'softmax'} output")
    if from_logits and kind != "binary" and in_unit and sums_to_one:
        return ("the outputs are already probabilities (softmax) but the loss has from_logits=True, "
                "which applies a second softmax: use from_logits=False or drop the output softmax")
    return ""


def check_initial_loss(model, x, y, num_classes: int | None = None, tolerance: float = 0.5,
                       from_logits: bool | None = None, *, loss=None) -> InitialLossResult:
    """Compare the untrained model's mean loss on `x` with its reference value (``ln(C)``).

    The loss is `loss`, else the one the model was compiled with, else sparse categorical
    cross-entropy (with `from_logits`, default False). Passes when
    ``|loss - ln(C)| <= tolerance * ln(C)`` and the outputs agree with the loss's from_logits
    (softmax outputs with from_logits=False, logits with True); not applicable (``passed``
    None) for a loss without a reference value, e.g. a regression loss. `num_classes` defaults
    to the model's output width. Pass a few hundred samples. The default tolerance is wide on
    purpose: logits of standard deviation s give a loss near ``ln(C) + s**2 / 2``, and Keras'
    Glorot head on unit-variance features gives s ~ 1 (the fresh reference MLP measures 2.9
    against 2.30), while a last layer with 100x too large weights measures about 14.

    Usage: ``check_initial_loss(keras_bn.build_dense((784,), [32], 10), x[:500], y[:500]).passed``
    """
    tolerance = check_float("tolerance", tolerance, low=0.0, low_inclusive=False)
    loss_fn = _resolve_loss(model, loss, from_logits)
    name = loss_name(loss_fn)
    outputs = model(x, training=False)
    if isinstance(outputs, (dict, list, tuple)):
        raise ValueError(f"check_initial_loss measures a single-output model; this one has {len(outputs)} outputs. "
                         f"Check one head: keras.Model(model.inputs, model.outputs[i]) with its loss as `loss=`. "
                         f"Received: model={model.name!r}")
    pred = keras.ops.convert_to_numpy(outputs)
    value = float(np.mean(keras.ops.convert_to_numpy(loss_fn(y, pred))))
    if num_classes is None:
        num_classes = int(pred.shape[-1]) if pred.ndim > 1 else None
    kind = loss_kind(loss_fn)
    expected = expected_initial_loss(loss_fn, num_classes)
    if expected is None:
        return InitialLossResult(None, value, None, num_classes, tolerance, name, None,
                                 f"{name} has no reference value at initialization (ln(C) is for cross-entropy)")
    reference, formula = expected
    note = _logits_mismatch(kind, _from_logits(loss_fn) if isinstance(loss_fn, keras.losses.Loss) else False, pred)
    classes = num_classes if formula == "ln(C)" else 2
    passed = bool(not note and initial_loss_verdict(value, classes, tolerance)[0])
    return InitialLossResult(passed, value, reference, classes, tolerance,
                             name, formula, note)


def check_overfit(model_fn: Callable, x, y, n: int = 20, max_steps: int = 200, *,
                  target_accuracy: float = 1.0, target_loss: float = 0.05, optimizer=None, loss=None,
                  seed: int = 0) -> OverfitResult:
    """Train ``model_fn()`` full-batch on `n` random examples of `x`, `y` and count the steps
    until the train accuracy reaches `target_accuracy` and the loss `target_loss`.

    The model keeps its own compile (optimizer, loss and metrics) if it has one, else gets
    `optimizer` (default Adam 1e-2: on 20 examples the reference MLP fits in about 30 steps,
    against about 180 at 1e-3) and `loss` (default sparse cross-entropy with accuracy); give it
    no regularization (a warning names regularization losses found). Accuracy and loss are
    those of the training step itself, so BatchNorm's lagging moving averages do not blur the
    answer. The accuracy target applies when the compile logs an accuracy (``accuracy``,
    ``*_accuracy``); otherwise (a regression loss, or no accuracy metric) only the loss target.

    Usage: ``check_overfit(lambda: keras_bn.build_dense((784,), [32, 32], 10), x, y).steps``
    """
    n = check_positive_int("n", n)
    max_steps = check_positive_int("max_steps", max_steps)
    target_accuracy = check_float("target_accuracy", target_accuracy, low=0.0, high=1.0)
    target_loss = check_float("target_loss", target_loss, low=0.0)
    if n > len(x):
        raise ValueError(f"`n` must be at most the {len(x)} samples given. Received: n={n}")
    if optimizer is None:
        from keras_bn.optimizers import adam

        optimizer = adam(learning_rate=1e-2)
    model = compiled(make_model(model_fn), optimizer, loss)
    idx = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    xs, ys = x[idx], y[idx]
    _build_for_fit(model, xs, ys)
    if model.losses:
        _warnings.warn(f"check_overfit: the model has {len(model.losses)} regularization losses; "
                       "the check assumes none.")
    logs, key = {"loss": float("nan")}, None
    for step in range(1, max_steps + 1):
        logs = model.train_on_batch(xs, ys, return_dict=True)
        key = next((k for k in logs if k in ("accuracy", "acc") or k.endswith("_accuracy")), None)
        accuracy = None if key is None else float(logs[key])
        if not np.isfinite(logs["loss"]):
            break
        if (accuracy is None or accuracy >= target_accuracy) and logs["loss"] <= target_loss:
            return OverfitResult(True, step, accuracy, float(logs["loss"]), n, max_steps)
    accuracy = None if key is None else float(logs[key])
    return OverfitResult(False, None, accuracy, float(logs["loss"]), n, max_steps)


def _build_for_fit(model, x, y) -> None:
    """The optimizer's slots and the metrics' variables now, from one batch: built inside the
    first traced step instead, they make TensorFlow trace it twice (about 1 s per check)."""
    from keras_bn import _keras_internals

    _keras_internals.build_for_fit(model, x, y)


def check_regularization_raises_loss(model_fn: Callable, x, y, l2: float = 1e-3,
                                     samples: int = 256, *, loss=None) -> RegularizationResult:
    """Put an L2(`l2`) penalty on every kernel of ``model_fn()`` and compare the loss the model
    trains on (``model.compute_loss``, which adds ``model.losses``) before and after.

    Passes when the loss rises by the penalty ``l2 * sum(kernel**2)`` (within 1%).

    Usage: ``check_regularization_raises_loss(model_fn, x, y, l2=1e-2).regularized_loss``
    """
    l2 = check_float("l2", l2, low=0.0, low_inclusive=False)
    samples = check_positive_int("samples", samples)
    model = compiled(make_model(model_fn), loss=loss)
    xs, ys = x[:samples], y[:samples]
    y_pred = model(xs, training=False)
    loss = float(keras.ops.convert_to_numpy(model.compute_loss(xs, ys, y_pred, training=False)))
    kernels = [v for v in model.trainable_variables if v.path.endswith("kernel") and v.regularizer is None]
    penalty = l2 * sum(float(np.sum(np.square(v.numpy()))) for v in kernels)
    for variable in kernels:
        variable.regularizer = keras.regularizers.L2(l2)
    try:
        regularized = float(keras.ops.convert_to_numpy(model.compute_loss(xs, ys, y_pred, training=False)))
    finally:
        for variable in kernels:
            variable.regularizer = None
    passed = bool(regularized > loss and abs(regularized - loss - penalty) <= 0.01 * penalty + 1e-6)
    return RegularizationResult(passed, loss, regularized, penalty, l2)


class LossGuard(keras.callbacks.Callback):
    """Stop training once the loss exceeds `factor` x its first value or turns non-finite.

    The rule of SEEDS §7 ("stop a trial early once its loss exceeds 3x the initial loss").
    The loss compared is the one Keras reports after each batch (the epoch's running mean),
    and the initial value is the first batch's. On stopping it prints why, keeps it in
    ``.reason`` / ``.stopped_step`` and, given `log_dir`, writes a text summary
    ``loss_guard/reason`` and a scalar ``loss_guard/loss`` there. It checks every
    `check_every` batches (a batch hook syncs with the host; raise it for long runs).

    Usage::

        guard = LossGuard(factor=3, log_dir="logs/trial_0")
        model.fit(x, y, callbacks=[guard]); guard.stopped
    """

    def __init__(self, factor: float = 3.0, log_dir=None, check_every: int = 1, verbose: bool = True):
        super().__init__()
        self.factor = check_float("factor", factor, low=1.0, low_inclusive=False)
        self.check_every = check_positive_int("check_every", check_every)
        self.log_dir = None if log_dir is None else str(log_dir)
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.initial_loss = None
        self.last_loss = None
        self.reason = None
        self.stopped_step = None
        self._step = 0

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def on_train_begin(self, logs=None):
        self._reset()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.stopped or (self._step % self.check_every and self.initial_loss is not None):
            return
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        self.last_loss = loss
        if not math.isfinite(loss):
            self._stop(f"loss turned {loss} at step {self._step}", loss)
        elif self.initial_loss is None:
            self.initial_loss = loss
        elif loss > self.factor * self.initial_loss:
            self._stop(f"loss {loss:.4g} > {self.factor:g} x initial {self.initial_loss:.4g} at step {self._step}", loss)

    def _stop(self, reason: str, loss: float):
        self.reason, self.stopped_step = reason, self._step
        self.model.stop_training = True
        if self.verbose:
            print(f"LossGuard: stopping: {reason}")
        if self.log_dir is not None:
            try:
                self._write(reason, loss)
            except Exception as error:  # noqa: BLE001  a failing disk must not end the run
                _warnings.warn(f"LossGuard could not write to log_dir={self.log_dir!r}: {error!r}", RuntimeWarning)

    def _write(self, reason: str, loss: float) -> None:
        from keras_bn.events import EventFileWriter

        writer = EventFileWriter(self.log_dir)
        writer.add_text(self._step, "loss_guard/reason", reason)
        writer.add_scalars(self._step, {"loss_guard/loss": loss if math.isfinite(loss) else float("nan")})
        writer.close()


def check_short_run(model_fn: Callable, x, y, epochs: int = 1, batch_size: int = 64,
                    factor: float = 3.0, log_dir=None, *, loss=None) -> ShortRunResult:
    """Fit ``model_fn()`` for `epochs` under `LossGuard(factor)`; passes when it was not
    stopped and the last loss is below the first.

    Usage: ``check_short_run(lambda: compiled_model_with_lr_10(), x[:2000], y[:2000]).reason``
    """
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    model = compiled(make_model(model_fn), loss=loss)
    guard = LossGuard(factor, log_dir=log_dir)
    _build_for_fit(model, x[:batch_size], y[:batch_size])
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[guard])
    initial = guard.initial_loss if guard.initial_loss is not None else float("nan")
    final = guard.last_loss if guard.last_loss is not None else float("nan")
    passed = bool(not guard.stopped and final < initial)
    return ShortRunResult(passed, initial, final, guard.stopped, guard.reason, guard._step)


def sanity_check(model_fn: Callable, data, *, num_classes: int | None = None, loss=None, overfit_n: int = 20,
                 overfit_steps: int = 200, l2: float = 1e-3, short_run_samples: int = 2000,
                 verbose: bool = True) -> SanityReport:
    """Run the four checks on fresh models from `model_fn` and print a pass/FAIL/n/a table.

    `data` is what ``model.fit`` takes: a standardized `keras_bn.data.Dataset`-like object,
    ``(x, y)`` or ``(x, y, x_val, y_val)`` (only the training split is used), or a
    ``tf.data.Dataset``, ``keras.utils.PyDataset`` or generator of ``(x, y)`` batches, of which
    the first ``max(1000, short_run_samples)`` samples are read once. `model_fn()` returns a new
    model, compiled (its optimizer, loss and metrics are tested) or not (Adam and `loss`,
    default sparse cross-entropy with accuracy). `loss` is also what the initial-loss check
    measures (default: the compiled loss).

    Usage::

        report = sanity_check(lambda: keras_bn.build_dense((784,), [32, 32], 10), (x, y))
        assert report.passed, report.table()
    """
    short_run_samples = check_positive_int("short_run_samples", short_run_samples)
    x, y = take_arrays(data, None if isinstance(data, (tuple, list)) or hasattr(data, "x_train")
                       else max(1000, short_run_samples, overfit_n))
    results = {
        "initial_loss": check_initial_loss(make_model(model_fn), x[:1000], y[:1000], num_classes, loss=loss),
        "overfit": check_overfit(model_fn, x, y, n=overfit_n, max_steps=overfit_steps, loss=loss),
        "regularization": check_regularization_raises_loss(model_fn, x, y, l2=l2, loss=loss),
        "short_run": check_short_run(model_fn, x[:short_run_samples], y[:short_run_samples], loss=loss),
    }
    report = SanityReport(results)
    if verbose:
        print(report.table())
    return report
