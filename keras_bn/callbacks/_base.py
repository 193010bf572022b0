"""What every keras-bn diagnostics callback shares: cadence, step counting, writers, failure.

**Cadence: statistics stay on the device between reads.** Every quantity of the training step
sits in variables updated inside the compiled step and is read by the host only every `every`
optimizer steps (and at each epoch end), never on other steps: that is what keeps the
callbacks cheap, since a host read of a device value costs a synchronization. The steps are
counted in plain Python in ``on_train_batch_begin``, which compares the batch with the next
one that has work (`_due_batch`) and does nothing else on other steps. None of these
callbacks overrides ``on_train_batch_end``: on the JAX and PyTorch backends that keeps Keras' asynchronous batch
dispatch (callback_list.py turns it off for the whole ``fit`` when a callback overrides a
batch-end hook). On TensorFlow, Keras >= 3.7 never dispatches asynchronously
(``IS_THREAD_SAFE = False``), so there the saving is the host reads alone.

**Steps.** Summaries of training quantities use the optimizer step (``optimizer.iterations``
after the step they describe); ``epoch_*`` scalars use the epoch index, as Keras' TensorBoard
callback does. Every quantity is also logged at each epoch end.

**Figures** are requested from the writers' background thread at an epoch end once
`figure_secs` have passed since training began or since the last figure, and once more at
train end for the final state, and drawn in the figure process
(keras_bn.callbacks._figure_process), so matplotlib never holds this process' GIL against
the training loop; a figure still costs CPU (tens of ms, more for big grids), which must not
land in every short epoch (``figure_secs=0`` draws one at every epoch end). ``fit`` does not
wait for the train-end figure: the writers close once it is written, or at interpreter exit
(`RunWriters.end_fit`).

**Failure.** Keras calls ``on_train_end`` only when ``fit`` returns. The model's `StepTaps`
(keras_bn.callbacks._taps) owns the instrumented train function: when a step raises (anything
but the end of the data) it ends every keras-bn callback of the fit (their patches are already
gone: they exist only while a step runs) and closes the writers, then re-raises; a fit ended by
another callback's error is cleaned up at the next step or fit. Writers are flushed at each
epoch end and at most `flush_secs` (5 s) after any write (by a timer, even if nothing else is
written), and closed at interpreter exit and on SIGTERM, so an error raised anywhere else loses
nothing either; SIGKILL loses at most the last `flush_secs`. A log directory that cannot be
written raises ValueError at train begin, before the first step.

**Resuming.** Steps come from ``optimizer.iterations``, so a restored model (``.keras`` file or
checkpoint with its optimizer) fit again with ``initial_epoch`` into the same log directory
continues the step numbering in a new event file; earlier steps are never overwritten. When the
log already holds later steps than the optimizer's (weights restored without the optimizer, or
a new optimizer), one warning says so and the steps continue after the last one in the log
(`RunWriters.step_offset`); the cadence still follows the optimizer.

**A broken diagnostic never stops training**: its error is reported as a ``RuntimeWarning``
starting with ``"keras_bn"`` and training goes on (only TerminateOnNaN or the user stop it).
"""

from __future__ import annotations

import time
import traceback

import keras

from keras_bn import _warnings
from keras_bn._validation import check_float, check_positive_int
from keras_bn.callbacks._runs import check_log_dir_now, check_run_path
from keras_bn.callbacks._tap_state import TapState
from keras_bn.callbacks._taps import StepTaps
from keras_bn.callbacks._writer import RunWriters


def add_failure_handler(model: keras.Model, handler) -> None:
    """Run ``handler()`` once if one of `model`'s training steps raises during the current fit
    (for callbacks that are not `DiagnosticCallback`s, e.g. to write a report when training dies)."""
    StepTaps.of(model).add_failure_handler(handler)


def remove_failure_handler(model: keras.Model, handler) -> None:
    """Forget `handler` (call it in ``on_train_end``)."""
    StepTaps.of(model).remove_failure_handler(handler)


def check_log_dir(log_dir) -> str:
    """`log_dir` as a string path that can be written, checked when a callback is made: a
    non-path, an empty path, a NUL byte or a folder that cannot be created raise here."""
    return check_log_dir_now(log_dir)


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
    # `_log_step` reads the model's variables, so on JAX it needs the full state sync first.
    # False where it reads only what the trainer's unsynced state gives (TapState.read).
    _log_step_syncs = True

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
        # Shared writers (a preset's) come with a log_dir already checked for writing: check it once.
        self.log_dir = check_log_dir(log_dir) if writers is None else check_run_path(log_dir)
        self.every = check_positive_int("every", every)
        if not isinstance(figures, bool):
            raise TypeError(f"`figures` must be True or False. Received: figures={figures!r}")
        self.figures = figures
        self.figure_secs = check_float("figure_secs", figure_secs, low=0.0)
        self.writers = check_writers(writers, self.log_dir)
        self._steps_at_epoch_start = 0
        self._last_logged_step = None
        self._due_batch = 0  # the next batch with work (`_schedule`)
        self._step_offset = 0  # added to optimizer.iterations in this fit (RunWriters.step_offset)
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
        self._taps = StepTaps.of(self.model)
        self._taps.begin(self)
        self.writers.check_writable()  # fail before the first step, not with a warning per log
        if self._needs_built_model and not self.model.built:
            raise ValueError(
                f"{type(self).__name__} needs a built model: {self.model.name!r} has no weights yet "
                f"(a subclassed model before its first call). Build it before fit, e.g. "
                f"`model(x[:1])` or `model.build(input_shape)`."
            )
        self._step_offset = 0
        iterations = self._optimizer_step()  # one device read
        self._step_offset = self.writers.step_offset(iterations)  # > 0: the log is ahead of the optimizer
        self._steps_at_epoch_start = iterations + self._step_offset
        self._last_logged_step = self._steps_at_epoch_start
        self._last_figure = (None, time.monotonic())
        self._in_fit = True
        self._attach()
        self._schedule()

    def on_train_batch_begin(self, batch, logs=None):
        self._taps.arm()
        if batch >= self._due_batch:  # the whole per-step cost of a callback: one comparison
            self._batch_due(batch)

    def _batch_due(self, batch: int) -> None:
        """The work of a batch at or after `_due_batch` (a logging step; subclasses add their
        own, e.g. `UpdateRatio`'s comparison one batch after its snapshot)."""
        step = self._steps_at_epoch_start + batch  # steps finished so far
        if step >= self._next_log_step():
            self._last_logged_step = step
            if self._log_step_syncs:
                self._sync_state()
            self._run_safely(self._log_step, step)
        self._schedule()

    def _next_log_step(self) -> int:
        """The first step past the next multiple of `every` after the last logged one (the
        cadence follows the optimizer, so every worker logs the same steps)."""
        offset = self._step_offset
        return offset + ((self._last_logged_step - offset) // self.every + 1) * self.every

    def _schedule(self) -> None:
        """Set `_due_batch`, the batch of this epoch whose ``on_train_batch_begin`` has work
        next (a logging step): the steps between cost one comparison each."""
        self._due_batch = self._next_log_step() - self._steps_at_epoch_start

    def on_epoch_end(self, epoch, logs=None):
        step = self._optimizer_step()
        self._steps_at_epoch_start = step
        if step != self._last_logged_step:
            self._last_logged_step = step
            self._run_safely(self._log_step, step)
        self._schedule()
        self._run_safely(self._log_epoch, epoch, step, dict(logs or {}))
        if time.monotonic() - self._last_figure[1] >= self.figure_secs:
            self._submit_figure(step)
        self.writers.flush()

    def _submit_figure(self, step: int) -> None:
        if self.figures and self._last_figure[0] != step:
            self._last_figure = (step, time.monotonic())
            self.writers.submit(self._draw, step)

    def on_train_end(self, logs=None):
        self._end_fit(final_figure=True)

    # --- helpers --------------------------------------------------------------------
    def _end_fit(self, final_figure: bool = False) -> None:
        """Undo the fit's attachments once: at train end, when a step raised, or when the next
        fit finds this callback left over from a fit that a callback ended with an error.

        The figure of the final state (if not drawn yet) starts once every keras-bn callback of
        the fit has ended: drawn meanwhile, it would hold the GIL against their train-end work."""
        if not getattr(self, "_in_fit", False):
            return
        self._in_fit = False
        self._run_safely(self._detach)
        self.writers.flush()  # now: once a figure draws, its thread holds the GIL against the disk writes
        step = self._last_logged_step

        def finish():
            if final_figure:
                self._submit_figure(step)
            self.writers.end_fit()  # figures still drawing finish (and close the files) in the background

        self._taps.end(self, then=lambda: self._run_safely(finish))

    def _sync_state(self) -> None:
        """Make the model's variables hold the latest step's values before a read: on JAX
        reading ``Callback.model`` syncs the whole training state (Keras keeps it apart from
        the variables inside an epoch), so it happens only at the logging cadence."""
        self.model  # noqa: B018  the property does the sync

    def _optimizer_step(self) -> int:
        """The step summaries are written at: ``optimizer.iterations`` plus the fit's step offset
        (`RunWriters.step_offset`: non-zero when the log already holds later steps)."""
        optimizer = getattr(self.model, "optimizer", None)
        iterations = int(TapState.numpy(optimizer.iterations)) if optimizer is not None else 0
        return iterations + self._step_offset

    def _run_safely(self, function, *args) -> None:
        try:
            function(*args)
        except Exception as error:  # noqa: BLE001  a broken diagnostic must not stop training
            _warnings.warn(
                f"keras_bn {type(self).__name__}.{function.__name__} failed and was skipped: "
                f"{error!r}\n{traceback.format_exc(limit=-3)}",
                RuntimeWarning,
            )

    def get_config(self) -> dict:
        config = {"log_dir": self.log_dir, "every": self.every}
        if self.figures:
            config.update(figures=self.figures, figure_secs=self.figure_secs)
        return config
