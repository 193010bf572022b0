"""What every keras-bn diagnostics callback shares: cadence, step counting, writers, failure.

**Cadence without a host sync.** Keras 3 turns off asynchronous batch dispatch for the whole
``fit`` as soon as one callback overrides ``on_train_batch_end`` (callback_list.py checks it
with ``utils.is_default``; ``async_safe = True`` opts out). ``on_train_batch_begin`` is not
part of that check, so the callbacks count steps there in plain Python and act only when a
multiple of `every` has been passed: the statistics of the step just finished sit in
variables updated inside the training step and are read then, never on other steps. None of
these callbacks overrides ``on_train_batch_end``, so none needs ``async_safe``.

**Steps.** Summaries of training quantities use the optimizer step (``optimizer.iterations``
after the step they describe); ``epoch_*`` scalars use the epoch index, as Keras' TensorBoard
callback does. Every quantity is also logged at each epoch end.

**Figures** are drawn on the writers' background thread at an epoch end once `figure_secs`
have passed since training began or since the last figure, and once more at train end for
the final state: a figure costs 0.1-0.5 s of CPU, which must not land in every short epoch
(``figure_secs=0`` draws one at every epoch end).

**Failure.** Keras calls ``on_train_end`` only when ``fit`` returns. Each callback therefore
adds a handler to a thin wrapper around ``model.train_function`` which, when the step raises
(anything but the end-of-data signal), restores what the callback patched and closes the
writers, then re-raises. Writers are flushed at each epoch end and at most `flush_secs`
(5 s) after any write (by a timer, even if nothing else is written), and closed at
interpreter exit and on SIGTERM, so an error raised anywhere else (another callback, the
user's code) loses nothing either; SIGKILL loses at most the last `flush_secs`. A log
directory that cannot be written raises ValueError at train begin, before the first step.

**Resuming.** Steps come from ``optimizer.iterations``, so a restored model (``.keras`` file or
checkpoint with its optimizer) fit again with ``initial_epoch`` into the same log directory
continues the step numbering in a new event file; earlier steps are never overwritten.

**A broken diagnostic never stops training**: its error is reported as a ``RuntimeWarning``
starting with ``"keras_bn"`` and training goes on (only TerminateOnNaN or the user stop it).
"""

from __future__ import annotations

import os
import time
import traceback
import warnings
import weakref

import keras

from keras_bn._validation import check_float, check_positive_int
from keras_bn.callbacks._runs import check_writable_log_dir
from keras_bn.callbacks._writer import RunWriters

# model -> list of zero-argument handlers run when its train step raises.
_FAILURE_HANDLERS: "weakref.WeakKeyDictionary[keras.Model, list]" = weakref.WeakKeyDictionary()


def _is_end_of_data(error: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(error, (StopIteration, tf.errors.OutOfRangeError))


def _guard_train_function(model: keras.Model) -> None:
    """Wrap ``model.train_function`` (once) so the model's failure handlers run when it raises."""
    function = getattr(model, "train_function", None)
    if function is None or getattr(function, "_keras_bn_guarded", False):
        return
    handlers = _FAILURE_HANDLERS.setdefault(model, [])

    def guarded_train_function(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except BaseException as error:
            if not _is_end_of_data(error):
                for handler in list(handlers):
                    handler()
            raise

    guarded_train_function._keras_bn_guarded = True
    guarded_train_function._keras_bn_original = function
    model.train_function = guarded_train_function


def add_failure_handler(model: keras.Model, handler) -> None:
    """Run `handler()` if one of `model`'s training steps raises (until removed)."""
    handlers = _FAILURE_HANDLERS.setdefault(model, [])
    if handler not in handlers:
        handlers.append(handler)
    _guard_train_function(model)


def remove_failure_handler(model: keras.Model, handler) -> None:
    """Forget `handler`; unwrap the train function once no handler is left."""
    handlers = _FAILURE_HANDLERS.get(model, [])
    if handler in handlers:
        handlers.remove(handler)
    function = getattr(model, "train_function", None)
    if not handlers and getattr(function, "_keras_bn_guarded", False):
        model.train_function = function._keras_bn_original


def check_log_dir(log_dir) -> str:
    """Return `log_dir` as a string path, raising TypeError for anything else."""
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(f"`log_dir` must be a path (str or os.PathLike). Received: log_dir={log_dir!r}")
    return os.fspath(log_dir)


def check_writers(writers, log_dir: str) -> RunWriters:
    """`writers` if given (shared by a preset), else fresh writers for `log_dir`."""
    if writers is None:
        return RunWriters(log_dir)
    if not isinstance(writers, RunWriters):
        raise TypeError(f"`writers` must be a RunWriters or None. Received: writers={writers!r}")
    return writers


class DiagnosticCallback(keras.callbacks.Callback):
    """Base class: counts optimizer steps and calls `_log_step(step)` every `every` steps.

    Subclasses implement `_log_step` (and optionally `_attach`, `_detach`, `_log_epoch`).
    Usage (subclass)::

        class MyStat(DiagnosticCallback):
            def _log_step(self, step):
                with self.writers.writing("train", step) as write:
                    write.scalar("my_stat", 1.0)
    """

    # Reads the model's weights: an unbuilt model (a subclassed one before its first call) has
    # none at train begin, so such a callback would silently log nothing; it raises instead.
    _needs_built_model = True

    def __init__(
        self,
        log_dir,
        every: int = 100,
        *,
        figures: bool = False,
        figure_secs: float = 60.0,
        writers: RunWriters | None = None,
    ):
        super().__init__()
        self.log_dir = check_log_dir(log_dir)
        self.every = check_positive_int("every", every)
        if not isinstance(figures, bool):
            raise TypeError(f"`figures` must be True or False. Received: figures={figures!r}")
        self.figures = figures
        self.figure_secs = check_float("figure_secs", figure_secs, low=0.0)
        self.writers = check_writers(writers, self.log_dir)
        self._steps_at_epoch_start = 0
        self._last_logged_step = None
        self._last_figure = (None, -float("inf"))  # (step, time) of the last figure drawn

    # --- hooks for subclasses -------------------------------------------------------
    def _attach(self) -> None:
        """Called at train begin, before the first step."""

    def _detach(self) -> None:
        """Called at train end and when a step raises: undo what `_attach` did."""

    def _log_step(self, step: int) -> None:
        """Read and write the statistics of the step that just finished."""

    def _log_epoch(self, epoch: int, step: int, logs: dict) -> None:
        """Called at each epoch end, after `_log_step`."""

    def _draw(self, step: int) -> None:
        """Draw this callback's figure of the latest statistics (runs on a background thread)."""

    # --- Keras hooks ----------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if getattr(self.writers, "is_chief", True):  # fail before the first step, not with a warning per log
            check_writable_log_dir(self.writers.log_dir)
        if self._needs_built_model and not self.model.built:
            raise ValueError(
                f"{type(self).__name__} needs a built model: {self.model.name!r} has no weights yet "
                f"(a subclassed model before its first call). Build it before fit, e.g. "
                f"`model(x[:1])` or `model.build(input_shape)`."
            )
        self._steps_at_epoch_start = self._optimizer_step()
        self._last_logged_step = self._steps_at_epoch_start
        self._last_figure = (None, time.monotonic())
        self._attach()
        add_failure_handler(self.model, self._on_failure)

    def on_train_batch_begin(self, batch, logs=None):
        step = self._steps_at_epoch_start + batch  # steps finished so far
        if step // self.every > self._last_logged_step // self.every:
            self._last_logged_step = step
            self._run_safely(self._log_step, step)

    def on_epoch_end(self, epoch, logs=None):
        step = self._optimizer_step()
        self._steps_at_epoch_start = step
        if step != self._last_logged_step:
            self._last_logged_step = step
            self._run_safely(self._log_step, step)
        self._run_safely(self._log_epoch, epoch, step, dict(logs or {}))
        if time.monotonic() - self._last_figure[1] >= self.figure_secs:
            self._submit_figure(step)
        self.writers.flush()

    def _submit_figure(self, step: int) -> None:
        if self.figures and self._last_figure[0] != step:
            self._last_figure = (step, time.monotonic())
            self.writers.submit(self._draw, step)

    def on_train_end(self, logs=None):
        remove_failure_handler(self.model, self._on_failure)
        self._submit_figure(self._last_logged_step)  # the final state, if not drawn yet
        self._run_safely(self._detach)
        self.writers.close()

    # --- helpers --------------------------------------------------------------------
    def _on_failure(self) -> None:
        remove_failure_handler(self.model, self._on_failure)
        self._run_safely(self._detach)
        self.writers.close()

    def _optimizer_step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        return int(optimizer.iterations.numpy()) if optimizer is not None else 0

    def _run_safely(self, function, *args) -> None:
        try:
            function(*args)
        except Exception as error:  # noqa: BLE001  a broken diagnostic must not stop training
            warnings.warn(
                f"keras_bn {type(self).__name__}.{function.__name__} failed and was skipped: "
                f"{error!r}\n{traceback.format_exc(limit=-3)}",
                RuntimeWarning,
                stacklevel=2,
            )

    def get_config(self) -> dict:
        config = {"log_dir": self.log_dir, "every": self.every}
        if self.figures:
            config.update(figures=self.figures, figure_secs=self.figure_secs)
        return config
