"""What every keras-bn diagnostics callback shares: cadence, step counting, writers, failure.

**Cadence: statistics stay on the device between reads.** Every quantity of the training step
sits in variables updated inside the compiled step and is read by the host only every `every`
optimizer steps (and at each epoch end), never on other steps: that is what keeps the
callbacks cheap, since a host read of a device value costs a synchronization. Callbacks
given one `ReadBudget` (the preset's) read a logging step together or skip it together, so
that their reads stay within a share of the wall time (`ReadBudget`). The steps are
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


class ReadBudget:
    """The share of wall time the scheduled reads of the callbacks sharing it may take.

    A scheduled logging step is read by all of them or by none: it is skipped while the reads of
    the last step read took more than `max_overhead` x the wall time since that step (the
    cheaper of the last two read steps is taken, so a one-off cost, the read functions' first
    compilation or a disk flush, does not silence the next ones). The first two scheduled steps
    of a budget always read. What a skipped step would have shown is not lost: the gradient
    tap's counts and peak cover every step since the previous read, and the next read's
    ``batch_*`` are the running epoch means. Epoch-end reads always happen and are not counted.
    The `diagnostics` preset shares one (``max_read_overhead``) among `MetricsLogger`,
    `GradientNorms` and `UpdateRatio`.

    Usage::

        budget = ReadBudget(0.01)
        if budget.allows(step):
            start = budget.clock()
            ...  # the reads of `step`
            budget.spend(budget.clock() - start)
    """

    def __init__(self, max_overhead: float, clock=time.perf_counter):
        self.max_overhead = check_float("max_overhead", max_overhead, low=0.0, high=1.0, low_inclusive=False)
        self.clock = clock  # wall time in seconds (tests and benchmarks give another)
        self.read_steps = 0
        self.skipped_steps = 0
        self._decided = (None, True)  # (step, whether it is read): every caller gets one answer
        self._costs: list[float] = []  # what the reads of the last two read steps took, in s
        self._spent = 0.0  # the reads of the latest read step so far
        self._since = None  # when the latest read step was decided

    def allows(self, step: int) -> bool:
        """Whether the scheduled logging `step` is read (the same answer for every caller)."""
        if self._decided[0] == step:
            return self._decided[1]
        now = self.clock()
        if self._since is not None and self._decided[1]:
            self._costs = (self._costs + [self._spent])[-2:]
        allowed = len(self._costs) < 2 or min(self._costs) <= self.max_overhead * (now - self._since)
        if allowed:
            self.read_steps += 1
            self._spent, self._since = 0.0, now
        else:
            self.skipped_steps += 1
        self._decided = (step, allowed)
        return allowed

    def spend(self, seconds: float) -> None:
        """Count `seconds` of reading against the latest read step."""
        self._spent += seconds

    def _new_fit(self) -> None:
        """A fit begins: its steps get answers of their own (a new model's step numbers start
        again at 0, so the last fit's last answer must not carry over); whether that step was
        read stays, so `allows` still counts its cost."""
        self._decided = (None, self._decided[1])


def check_read_budget(read_budget) -> ReadBudget | None:
    """`read_budget` if it is a `ReadBudget` or None; anything else raises TypeError."""
    if read_budget is not None and not isinstance(read_budget, ReadBudget):
        raise TypeError(f"`read_budget` must be a ReadBudget or None. Received: read_budget={read_budget!r}")
    return read_budget


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
        read_budget: ReadBudget | None = None,
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
        self.read_budget = check_read_budget(read_budget)
        self._steps_at_epoch_start = 0
        self._last_scheduled_step = None  # the last logging step handled (read, or skipped by the budget)
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
        if self.read_budget is not None:
            self.read_budget._new_fit()
        self._step_offset = 0
        iterations = self._optimizer_step()  # one device read
        self._step_offset = self.writers.step_offset(iterations)  # > 0: the log is ahead of the optimizer
        self._steps_at_epoch_start = iterations + self._step_offset
        self._last_scheduled_step = self._steps_at_epoch_start
        self._last_figure = (None, time.monotonic())
        self._in_fit = True
        self._attach()
        self._schedule()

    def on_train_batch_begin(self, batch, logs=None):
        self._taps.arm()
        if batch >= self._due_batch:  # the whole per-step cost of a callback: one comparison
            self._batch_due(batch)

    def _batch_due(self, batch: int):
        """The work of a batch at or after `_due_batch` (a logging step; subclasses add their
        own, e.g. `UpdateRatio`'s comparison one batch after its snapshot). Returns whether a
        logging step was read (False: skipped by the `read_budget`; None: none was due)."""
        step = self._steps_at_epoch_start + batch  # steps finished so far
        read = None
        if step >= self._next_log_step():
            self._last_scheduled_step = step
            read = self._read_allowed(step)
            if read:
                self._run_budgeted(self._read_step, step)
        self._schedule()
        return read

    def _read_step(self, step: int) -> None:
        if self._log_step_syncs:
            self._sync_state()
        self._log_step(step)

    def _read_allowed(self, step: int) -> bool:
        """Whether the scheduled logging `step` is read (always, without a `read_budget`)."""
        return self.read_budget is None or self.read_budget.allows(step)

    def _run_budgeted(self, function, *args) -> None:
        """`_run_safely`, its wall time counted against the `read_budget`."""
        if self.read_budget is None:
            self._run_safely(function, *args)
            return
        clock = self.read_budget.clock
        start = clock()
        try:
            self._run_safely(function, *args)
        finally:
            self.read_budget.spend(clock() - start)

    def _next_log_step(self) -> int:
        """The first step past the next multiple of `every` after the last scheduled one (the
        cadence follows the optimizer, so every worker logs the same steps)."""
        offset = self._step_offset
        return offset + ((self._last_scheduled_step - offset) // self.every + 1) * self.every

    def _schedule(self) -> None:
        """Set `_due_batch`, the batch of this epoch whose ``on_train_batch_begin`` has work
        next (a logging step): the steps between cost one comparison each."""
        self._due_batch = self._next_log_step() - self._steps_at_epoch_start

    def on_epoch_end(self, epoch, logs=None):
        step = self._optimizer_step()
        self._steps_at_epoch_start = step
        if step != self._last_scheduled_step:
            self._last_scheduled_step = step
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
        step = self._last_scheduled_step

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
