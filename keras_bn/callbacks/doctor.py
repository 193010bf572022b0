"""Doctor: the doctor's rules, live during ``fit``, on the values the diagnostics already read.

The callback listens to the shared `RunWriters` (``add_listener``): every scalar another
diagnostics callback writes reaches it as a Python float, so it reads nothing from the device
for those, and it keeps no per-step cadence of its own. After each write it evaluates
`keras_bn.doctor`'s rules on the run so far (outside epoch ends and train end, where it always
does, only while its own work has taken at most `MAX_OVERHEAD`, 0.2%, of the wall time); a finding seen for the first time is printed once as one line::

    step 1200  block3_relu  dead units 62% (> 40%): lower the learning rate or use He init / leaky_relu

written as text to TensorBoard's Text dashboard (run ``<log_dir>/doctor``) and to
``<log_dir>/report.md`` (rewritten at train begin, after each new finding, at each epoch end,
at train end and when a step raises, so a run that dies still leaves it).

What it measures itself (the facts the event files lack), in ``<log_dir>/doctor``:
``doctor/initial_loss`` (the loss of step 1, one read at step 1 of a fresh run),
``doctor/bn_gap/<layer>`` (at train end, when a
`probe` is given and the model has BatchNormalization: one inference pass on at most 256
probe samples, see `keras_bn.precise_bn.batchnorm_gaps`), and ``facts.json`` (loss kind and
classes, layer kinds, output layers, BN momentum and trainability, the per-replica batch BN
sees, epoch starts and ends). The
batch size is recorded inside the training step (one scalar assign in the first trainable BN
layer, read at epoch ends); not under a tf.distribute strategy.

``stop_on=("diverging",)`` stops ``fit`` like ``keras.callbacks.TerminateOnNaN`` when that
rule fires ("diverging" also covers a non-finite loss).

Usage::

    cbs = keras_bn.callbacks.diagnostics("logs/run1", probe=x_val[:256])  # includes a Doctor
    cbs = [*keras_bn.callbacks.diagnostics("logs/run1", doctor=False),
           keras_bn.callbacks.Doctor("logs/run1", stop_on=("diverging",))]  # its own writers: no
                                                                           # listener data
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

import keras

from keras_bn import _keras_internals as internals
from keras_bn import _warnings
from keras_bn import doctor as kb_doctor
from keras_bn._doctor_base import RULES
from keras_bn.callbacks._base import DiagnosticCallback
from keras_bn.callbacks._patch import set_on_instance

__all__ = ["Doctor"]

DOCTOR_RUN = "doctor"
REPORT_FILE = "report.md"
MAX_PROBE = 256
MAX_OVERHEAD = 0.002  # outside forced points, the Doctor's own work takes at most this share of wall time


class Doctor(DiagnosticCallback):
    """Evaluates the doctor's rules live; prints each new finding once; writes report.md.

    Args:
        log_dir: the run directory (the one given to the other diagnostics callbacks).
        every: unused (the Doctor evaluates when the other callbacks write); kept so that its
            signature is the other diagnostics callbacks'.
        probe: inputs for the BatchNormalization train/inference gap (None: not measured).
        stop_on: rule ids that stop training when they fire (e.g. ``("diverging",)``).
        verbose: print each new finding.
        writers: the shared `RunWriters` whose writes it listens to (the preset passes it).

    Attributes: ``findings`` (the latest version of each finding, ranked).

    Example::

        doctor = keras_bn.callbacks.Doctor("logs/run1", writers=writers, stop_on=("diverging",))
    """

    _needs_built_model = False

    def __init__(self, log_dir, every: int = 100, *, probe=None, stop_on=(), verbose: bool = True, writers=None):
        super().__init__(log_dir, every, writers=writers)
        if isinstance(stop_on, str):
            stop_on = (stop_on,)
        for rule in stop_on:
            if rule not in RULES:
                raise ValueError(f"`stop_on` must hold rule ids of keras_bn.doctor.RULES ({', '.join(RULES)}). "
                                 f"Received: stop_on={tuple(stop_on)!r}")
        self.stop_on = set(stop_on) | ({"nonfinite_loss"} if "diverging" in stop_on else set())
        self.probe = None if probe is None else keras.tree.map_structure(lambda a: a[:MAX_PROBE], probe)
        self.verbose = bool(verbose)
        self.series: dict = defaultdict(list)
        self.facts = kb_doctor.RunFacts()
        self._found: dict = {}
        self._saved: tuple | None = None  # the (facts.json, report.md) texts last written
        self._dirty = False
        self._listening = False
        self._text_writer = None
        self._text_step, self._text_lines = None, []  # the findings first seen at the last step written
        self._latest_step = 0  # the latest optimizer step seen (epoch_* scalars are at x = epoch)
        self._tap = None  # _BatchSizeTap: the largest batch a trainable BN layer saw
        self._initial_pending = False
        self._busy = 0.0  # seconds spent evaluating since train begin
        self._began = time.monotonic()
        self.stopped_by = None

    @property
    def findings(self) -> list:
        return kb_doctor.rank(self._found.values())

    # --- listening ----------------------------------------------------------------------------
    def _listen(self, run, step, scalars):
        """Called by the writers after each write: record it, then evaluate (within budget)."""
        prefix = "" if run == "train" else f"{run}/"
        for tag, value in scalars.items():
            values = self.series[prefix + tag]
            if values and values[-1][0] == step:
                values[-1] = (step, value)
            else:
                values.append((step, value))
        if not all(tag.startswith("epoch_") for tag in scalars):  # epoch_* are written at x = epoch
            self._latest_step = max(self._latest_step, int(step))
        self._dirty = True
        if getattr(self, "_taps", None) is not None:  # trained a model (`self.model` syncs JAX's state)
            self._run_safely(self._evaluate, self._latest_step)

    def _own_scalars(self, step, scalars):
        """Write the doctor's own measurements to its run, and into the series."""
        for tag, value in scalars.items():
            self.series[tag].append((step, float(value)))
            self._write_summary(internals.tensorboard_scalar_summary(tag, value), step)
        self._dirty = True

    def _write_summary(self, summary, step):
        from keras_bn.events import EventFileWriter

        if not getattr(self.writers, "is_chief", True):
            return
        if self._text_writer is None:
            self._text_writer = EventFileWriter(os.path.join(self.log_dir, DOCTOR_RUN))
        self._text_writer.add(internals.tensorboard_event_class()(wall_time=time.time(), step=int(step), summary=summary))
        try:  # a finding must be on disk at once (training may die next); a full disk must not stop it
            self._text_writer.flush()
        except OSError:
            pass

    # --- Keras hooks ------------------------------------------------------------------------------
    def _attach(self):
        if not self._listening:
            self.writers.add_listener(self._listen)
            self._listening = True
        self._refresh_facts()
        self._busy, self._began = 0.0, time.monotonic()
        self._latest_step = self._optimizer_step()
        self._initial_pending = self._latest_step == 0
        self._wrap_batch_size()
        self._save()

    def _refresh_facts(self):
        if not self.model.built:
            return
        facts = kb_doctor.model_facts(self.model, self.probe)
        facts.epoch_starts, facts.epoch_ends = self.facts.epoch_starts, self.facts.epoch_ends
        facts.batch_size = self.facts.batch_size
        self.facts = facts

    def on_epoch_begin(self, epoch, logs=None):
        step = self._optimizer_step()
        if step not in self.facts.epoch_starts:
            self.facts.epoch_starts.append(step)

    def on_epoch_end(self, epoch, logs=None):  # no per-step cadence of its own: see `_listen`
        step = self._optimizer_step()
        self.facts.epoch_ends[str(epoch)] = step
        self._run_safely(self._log_epoch, step)

    def on_train_batch_begin(self, batch, logs=None):  # the only per-step work: one test
        if self._initial_pending and batch >= 1:
            self._initial_pending = False
            self._run_safely(self._read_initial_loss, self._optimizer_step())

    def on_train_end(self, logs=None):
        self._run_safely(self._measure_gaps, self._optimizer_step())
        super().on_train_end(logs)

    def _read_initial_loss(self, step):
        tracker = next((m for m in self.model.metrics if m.name == "loss"), None)  # Keras' loss tracker
        if tracker is not None:
            try:  # two variable reads; an eager `result()` dispatches ops (~0.1 s the first time)
                loss = float(tracker.total.numpy()) / float(tracker.count.numpy())
            except (AttributeError, ZeroDivisionError):
                loss = float(tracker.result())
            self._own_scalars(step, {"doctor/initial_loss": loss})
            self._evaluate(step, force=True)

    def _log_epoch(self, step):
        if not self.facts.layers:
            self._refresh_facts()
        self._read_batch_size()
        self._dirty = True
        self._evaluate(step, force=True)
        self._save(step)

    def _measure_gaps(self, step):
        """The BN train/inference gaps on the probe (one inference pass), at train end only:
        during training the moving statistics lag by design (momentum 0.99 remembers ~100
        steps); what matters is the model that is evaluated and saved."""
        if self.probe is None or not self.facts.batchnorm:
            return
        from keras_bn.precise_bn import batchnorm_gaps

        start = time.monotonic()
        gaps = batchnorm_gaps(self.model, self.probe, keep_traced=True)
        self._busy += time.monotonic() - start
        self._own_scalars(step, {f"doctor/bn_gap/{name}": gap for name, gap in gaps.items()})

    def _detach(self):
        self._unwrap_batch_size()
        self._evaluate(self._optimizer_step(), force=True)
        self._save(self._optimizer_step())
        if self._text_writer is not None:
            self._text_writer.close()
            self._text_writer = None

    # --- the rules ----------------------------------------------------------------------------
    def _evaluate(self, step, force: bool = False):
        """Run the rules on the series so far; between epoch ends only within `MAX_OVERHEAD`."""
        # Text events go at the optimizer step, never backwards: TensorBoard drops the events
        # after a step that goes back (it takes them for a restarted run's orphans).
        step = self._latest_step = max(int(step), self._latest_step)
        now = time.monotonic()
        if not self._dirty or (not force and self._busy > MAX_OVERHEAD * (now - self._began)):
            return
        self._dirty = False
        try:
            found = kb_doctor.evaluate(self.series, self.facts)  # appended in step order: no sort
        finally:
            self._busy += time.monotonic() - now
        new = []
        for finding in found:
            if finding.key not in self._found:
                new.append(finding)
            self._found[finding.key] = finding
        if not new:
            return
        if self._text_step != step:
            self._text_step, self._text_lines = step, []
        for finding in new:
            if self.verbose:
                print(str(finding), flush=True)
            self._text_lines.append(f"- **{finding.severity}** `{finding.rule}`: {finding}")
        # TensorBoard keeps one text per tag and step (a later one replaces it): the text of a
        # step lists every finding first seen at that step.
        self._write_summary(internals.tensorboard_text_summary("doctor/findings", "\n".join(self._text_lines)), step)
        self._save(step)
        stops = [f for f in new if f.rule in self.stop_on]
        if stops:
            self.stopped_by = stops[0]
            self.model.stop_training = True
            if self.verbose:
                print(f"keras-bn doctor: stopping training at step {step}: {stops[0].rule}", flush=True)

    def _save(self, step=None):
        """Write facts.json and report.md; a disk that refuses says so once, never stops training."""
        if not getattr(self.writers, "is_chief", True):
            return
        try:
            self.facts.findings = [f.to_dict() for f in self._found.values()]
            facts = self.facts.to_json()
            report = kb_doctor.markdown_report(self._found.values(), title=f"keras-bn doctor: {self.log_dir}",
                                               step=step if step is not None else self._optimizer_step())
            path = os.path.join(self.log_dir, REPORT_FILE)
            if (facts, report) == self._saved and os.path.exists(path):
                return  # unchanged since the last save (e.g. an epoch end followed by train end)
            self.facts.save(self.log_dir, facts)
            with open(path + ".tmp", "w", encoding="utf-8") as file:
                file.write(report)
            os.replace(path + ".tmp", path)
            self._saved = (facts, report)
        except OSError as error:
            if not getattr(self, "_warned_save", False):
                self._warned_save = True
                _warnings.warn(f"keras_bn Doctor: could not write {REPORT_FILE} in {self.log_dir!r} ({error}); "
                               "it is written again at the next finding or epoch end.", RuntimeWarning)

    # --- the per-replica batch size BN sees ------------------------------------------------
    def _wrap_batch_size(self):
        """Register a tap (with the model's StepTaps, which patches only while a step runs)
        that records the largest batch a trainable BatchNormalization layer trains on."""
        from keras_bn.distribute import is_distributed

        self._tap = None
        if is_distributed(getattr(self.model, "distribute_strategy", None)):
            return  # a replica-local count would need a mirrored variable: not measured there
        layer = next((layer for _, layer in _batchnorm_layers(self.model) if layer.trainable), None)
        if layer is None:
            return
        self._tap = self._taps.shared(("doctor_batch_size", id(layer)), lambda: _BatchSizeTap(layer),
                                      lambda tap: tap.layer is layer)
        self._taps.register(self._tap)

    def _read_batch_size(self):
        if getattr(self, "_tap", None) is not None:
            value = self._tap.read()
            if value > 0:
                self.facts.batch_size = value

    def _unwrap_batch_size(self):
        self._read_batch_size()
        self._tap = None

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(stop_on=sorted(self.stop_on - {"nonfinite_loss"}) or (), verbose=self.verbose)
        return config


def _batchnorm_layers(model):
    from keras_bn.callbacks._layers import iter_layers

    return [(p, layer) for p, layer in iter_layers(model, parts=True)  # inside blocks and user layers too
            if isinstance(layer, keras.layers.BatchNormalization)]


class _BatchSizeTap:
    """The largest batch a BatchNormalization layer trained on: one ``assign`` per step on
    TensorFlow; on JAX the jitted step's shapes are static, so the traced shape is the batch
    (on PyTorch the eager step's shape is)."""

    backends = ("tensorflow", "jax", "torch")  # where StepTaps runs it

    def __init__(self, layer):
        from keras_bn.callbacks._tap_state import is_tensorflow

        self.layer = layer
        self.static = 0  # the largest batch of a traced (hence run) JAX step, or a torch step
        self.batch_size = None
        if is_tensorflow():
            import tensorflow as tf

            self.batch_size = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="keras_bn_doctor_batch")
        self._undo = None

    def read(self) -> int:
        """The largest batch seen so far (0: none)."""
        return max(self.static, int(self.batch_size.numpy()) if self.batch_size is not None else 0)

    def patch(self) -> None:
        layer, counter = self.layer, self.batch_size
        original = layer.call

        def call(inputs, *args, **kwargs):
            training = kwargs.get("training", args[0] if args else None)
            if training is True:
                if counter is None:
                    if isinstance(inputs.shape[0], int):  # None only while Keras builds symbolically
                        self.static = max(self.static, inputs.shape[0])
                else:
                    import tensorflow as tf

                    counter.assign(tf.maximum(counter, tf.shape(inputs, out_type=tf.int64)[0]))
            return original(inputs, *args, **kwargs)

        self._undo = set_on_instance(layer, "call", call)

    def unpatch(self) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()
