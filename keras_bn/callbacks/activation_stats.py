"""ActivationStats: what each layer outputs on a fixed probe batch, in inference mode.

Every `every` steps and at each epoch end the callback runs the model once on the probe
batch with ``training=False`` inside one traced function, in which the watched layers'
outputs are tapped as they are computed (`keras_bn.callbacks._probe`) and reduced on the
device, in float32, to a few sums and a histogram (`keras_bn.callbacks._reductions`), so only
small summaries reach the host. Any model style works: Sequential (built or not, with or
without ``Input``), Functional, nested and subclassed models; the callback is prepared when
the model is built (at the latest at the first batch).

**Watched layers** (``layers=None``): every layer whose output has an activation family
(`keras_bn.activations.activation_family`: the ReLU family, GELU/SiLU/ELU-like, tanh- and
sigmoid-like; Keras' activation layers, Dense/Conv layers with a fused activation and
keras-bn's blocks alike); if the model has none, every layer with weights. Pass
``layers=[...]`` (names, or ``"outer/inner"`` paths for nested models) to choose.

Statistics per watched layer (finite values only; NaN/Inf are counted, then dropped), as the
family declares (``FAMILY_STATISTICS``, table in docs/activations.md): mean, std and a
histogram for all; the dead-unit fraction (a unit, a feature of the channel axis, that is
<= 0 for every probe sample and position) and the zero fraction for the ReLU family; the
near-zero fraction (``|y| <= near_zero``) for the smooth family; the saturation (output in the
outer ``(1 - saturation_threshold) / 2`` of the range at either end) for tanh/sigmoid-like
ones; for tanh/sigmoid activation *layers* the 15th, 50th and 85th percentile of their input
(the pre-activation) of unit 0: the BN paper's Figure 1 view over time. A watched layer the
model did not call on the probe gets no statistics and one warning, never a number.

**Cost.** A read runs the network forward on the probe: on the small CNN with a 256-image
probe about 70 ms, 4-5 training steps. `max_overhead` bounds that share of training time
(the `diagnostics` preset sets 0.02). **Memory**: `max_probe_mb` bounds the read's working
set, layer outputs computed alongside included; a larger probe is read in chunks.

Usage::

    cb = keras_bn.callbacks.ActivationStats("logs/run1", probe=x_val[:256], every=100)
"""

from __future__ import annotations

import functools
import time

import numpy as np

import keras

from keras_bn import _warnings
from keras_bn._validation import check_float, check_positive_int
from keras_bn.activations import NEAR_ZERO, SATURATION_THRESHOLD
from keras_bn.callbacks import _probe
from keras_bn.callbacks._base import DiagnosticCallback
from keras_bn.callbacks._reductions import PERCENTILES, finalize, merge, nearest_rank_percentiles
from keras_bn.callbacks._writer import RunWriters

__all__ = ["ActivationStats", "OPTION_RANGES"]

# Allowed ranges of the numeric options (docs/activations.md derives the caps from their cost).
MAX_BINS = 1024  # 4 B per bin and layer on the device, 24 B per bin, layer and read on disk
MAX_PROBE_SAMPLES = 65536  # the probe is held as given; each read's time grows with it
MAX_PROBE_MB = 4096.0  # one chunk's values stay below 2**30: its int32 counts cannot overflow
OPTION_RANGES = {
    "bins": (1, MAX_BINS),
    "saturation_threshold": (0.0, 1.0),  # both ends excluded
    "near_zero": (0.0, 1.0),  # 0 excluded
    "max_probe_samples": (1, MAX_PROBE_SAMPLES),
    "max_probe_mb": (0.0, MAX_PROBE_MB),  # 0 excluded
    "max_overhead": (0.0, 1.0),  # 0 excluded; None: no budget
}
# Per sample, a read holds the largest layer's input and output, up to six same-sized float32
# tensors of the largest watched output (it, its reduction's temporaries, those TensorFlow's
# inter-op threads run alongside) and the other watched outputs: benchmarks/bench_probe_memory.py.
_REDUCTION_COPIES = 6


def _check_int_range(name: str, value, high: int) -> int:
    value = check_positive_int(name, value)
    if value > high:
        raise ValueError(f"`{name}` must be in [1, {high}]. Received: {name}={value!r}")
    return value


class ActivationStats(DiagnosticCallback):
    """Logs per-layer activation statistics on a fixed probe batch (inference mode).

    Args:
        log_dir: the TensorBoard run directory (``<log_dir>/train`` is written).
        probe: the probe inputs: an array (e.g. ``x_val[:256]``), a list/dict of arrays for
            a multi-input model, or a ``tf.data.Dataset`` (its first batch is used).
        every: log every this many optimizer steps (and at each epoch end).
        layers: names or paths of the layers to watch; None = every activation layer (see
            the module docstring).
        bins: histogram buckets, in [1, 1024].
        saturation_threshold: in (0, 1): a tanh-like output with ``|y| >`` this, a
            sigmoid-like one with ``|2y - 1| >`` this, counts as saturated (0.97: the slope
            is below 5.9 % of its peak; the same point of both curves).
        near_zero: in (0, 1]: the smooth family's near-zero fraction counts ``|y| <=`` this.
        max_probe_samples: at most this many probe samples are used, in [1, 65536]; a
            larger probe is cut, with one warning.
        max_probe_mb: memory bound of a read, in MiB, in (0, 4096]: the probe is read in
            chunks of samples whose layer outputs (all of them, not only the watched ones)
            and reductions fit. Results equal the one-chunk ones up to float rounding.
        max_overhead: None (read on every schedule) or the largest share of training time,
            in (0, 1], the reads may take: a scheduled read is skipped while the last one
            took more than ``max_overhead`` x the training time since it. Epoch-end reads
            always happen; ``skipped_reads`` counts the skipped ones.
        figures: draw the activation-histogram grid (at an epoch end, at most every
            `figure_secs`, and at train end).
        figure_secs: least wall time between two figures.
        writers: shared `RunWriters` (the `diagnostics` preset passes one).

    Example::

        cb = keras_bn.callbacks.ActivationStats("logs/run1", probe=x_val[:256], layers=["block1_relu"])
        model.fit(x, y, callbacks=[cb])
    """

    _needs_built_model = False  # prepared once the model is built (at the latest at the first batch)

    def __init__(
        self,
        log_dir,
        probe,
        every: int = 100,
        *,
        layers=None,
        bins: int = 30,
        saturation_threshold: float = SATURATION_THRESHOLD,
        near_zero: float = NEAR_ZERO,
        max_probe_samples: int = 512,
        max_probe_mb: float = 256.0,
        max_overhead: float | None = None,
        figures: bool = True,
        figure_secs: float = 60.0,
        writers: RunWriters | None = None,
        **removed,
    ):
        _refuse_removed_options(removed)
        super().__init__(log_dir, every, figures=figures, figure_secs=figure_secs, writers=writers)
        self.max_overhead = (
            None if max_overhead is None
            else check_float("max_overhead", max_overhead, low=0.0, high=1.0, low_inclusive=False)
        )
        self._clock = time.perf_counter  # tests replace it
        self._last_read = None  # (cost in s, end time) of the last read
        self._epoch_end = False
        self.skipped_reads = 0
        self.bins = _check_int_range("bins", bins, MAX_BINS)
        self.saturation_threshold = check_float(
            "saturation_threshold", saturation_threshold, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )
        self.near_zero = check_float("near_zero", near_zero, low=0.0, high=1.0, low_inclusive=False)
        self.max_probe_samples = _check_int_range("max_probe_samples", max_probe_samples, MAX_PROBE_SAMPLES)
        self.max_probe_mb = check_float("max_probe_mb", max_probe_mb, low=0.0, high=MAX_PROBE_MB, low_inclusive=False)
        if layers is not None:
            if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
                raise TypeError(
                    f"`layers` must be a list of layer names (or None for every activation layer). "
                    f"Received: layers={layers!r}"
                )
            layers = list(layers)
        self.layers = layers
        self.probe = _probe.as_probe(probe, self.max_probe_samples)
        self.latest_histograms: dict[str, tuple] = {}
        self._compute = None
        self._chunk_rows = None  # probe rows per chunk (None: not prepared)
        self._prepared_for = None  # (model, probe) the traced probe function was made for
        self._unprepared = False  # the fit's model was not built at train begin: prepare at the first batch
        self._silent: set[str] = set()  # watched layers the model did not call (warned once)

    # --- set-up -------------------------------------------------------------------------
    def set_model(self, model):
        super().set_model(model)
        if model.built:  # errors before training; an unbuilt model is prepared when fit built it
            self._prepare()

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._unprepared = not self.model.built  # a model built only by its first batch
        if not self._unprepared:
            self._prepare()
        else:
            self._due_batch = 0  # prepared at the first batch (`_batch_due`)

    def _batch_due(self, batch):
        # No `self.model` here: on JAX each read of it syncs the whole training state.
        if self._unprepared:
            self._unprepared = False
            self._prepare()
        super()._batch_due(batch)

    def _prepare(self) -> None:
        """Check the probe and layers against the model and trace the probe function (once
        per model and probe: further fits keep it)."""
        model = self.model
        if self._prepared_for is not None and self._prepared_for[0] is model and self._prepared_for[1] is self.probe:
            return
        probe = _probe.order_probe(model, self.probe)
        _probe.check_probe_fits(model, probe)
        watches = _probe.watched_layers(model, self.layers)
        if not watches:
            raise ValueError(
                f"ActivationStats found no layer to watch in model {model.name!r}: it has no "
                f"activation layer and no layer with weights. Pass layers=[...] naming the layers "
                f"to watch, or probe=None to diagnostics()."
            )
        self._watches, self._probe_arrays = watches, probe
        self._chunk_rows = self._rows_per_chunk(model, watches, probe)
        options = dict(bins=self.bins, saturation_threshold=self.saturation_threshold, near_zero=self.near_zero)
        from keras_bn.callbacks._taps import StepTaps

        read = functools.partial(_probe.probe_pass, model, tuple(watches), options)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf  # the traced read; the reductions themselves are keras.ops

            # A partial, not a closure: TensorFlow counts retraces per code object, so a closure
            # made for each new model or callback would warn about "retracing" it never did.
            # One signature (any chunk size, a range per watched layer; NaN: the chunk's own), so
            # one trace serves every chunk and pass.
            signature = [
                keras.tree.map_structure(lambda a: tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)), probe),
                tf.TensorSpec((len(watches), 2), tf.float32),
            ]
            make = lambda: tf.function(read, input_signature=signature)  # noqa: E731
        else:
            # Eager on JAX and PyTorch: a jax.jit of the model call would bake the weights of its
            # first trace into the compiled read (Keras variables are constants there).
            signature = None
            make = lambda: read  # noqa: E731
        # Kept with the model (keras_bn.callbacks._taps): a new callback on the same model, layers,
        # options and probe layout reuses the trace, so short repeated fits do not pay for it again.
        kind = "activation_probe " + repr(([(w.path, w.family, w.preactivation, w.feature_axis) for w in watches],
                                           sorted(options.items()), signature))
        self._compute = StepTaps.of(model).cached(kind, [w.layer for w in watches], make)
        self._silent = set()
        self.writers.add_charts(self._charts())
        self._prepared_for = (model, self.probe)

    def _rows_per_chunk(self, model, watches, probe) -> int:
        """Probe rows per read chunk so that the read's working set fits `max_probe_mb`."""
        rows = _probe.probe_rows(probe)
        with _probe.LayerTaps(watches, all_layers_of=model) as taps:
            try:
                model(_probe.to_tensors(_probe.slice_probe(probe, 0, 1)), training=False)
            except Exception as error:  # noqa: BLE001  shown with the probe's shape
                shapes = keras.tree.map_structure(lambda a: tuple(a.shape), probe)
                raise ValueError(
                    f"`probe` could not be run through model {model.name!r} ({type(model).__name__}): "
                    f"{error}. Pass a slice of the model's inputs, e.g. probe=x_val[:256]. "
                    f"Received: probe shape={shapes}"
                ) from error
        watched = sorted(_probe.bytes_per_sample(taps.outputs[w.path]) for w in watches if w.path in taps.outputs)
        # The largest watched output's reduction, plus every other watched output: the graph
        # executor may keep them all alive until their reductions run.
        per_sample = max(taps.sizes, default=0) + _REDUCTION_COPIES * sum(watched[-1:]) + sum(watched[:-1])
        budget = self.max_probe_mb * 2**20
        if per_sample > budget:
            _warnings.warn(
                f"keras_bn ActivationStats: one probe sample needs about {per_sample / 2**20:.1f} MiB "
                f"of layer outputs, more than max_probe_mb={self.max_probe_mb:g}; reading one sample "
                f"at a time. Raise `max_probe_mb` or watch fewer layers.",
                UserWarning,
            )
        return int(min(rows, max(1, budget // max(per_sample, 1))))

    # --- reading ------------------------------------------------------------------------
    def _results(self) -> dict:
        """``{path: statistics}`` of the probe, read in chunks of `_chunk_rows` samples (one
        chunk when the probe fits the memory budget)."""
        rows, size = _probe.probe_rows(self._probe_arrays), self._chunk_rows
        chunks = [_probe.slice_probe(self._probe_arrays, s, s + size) for s in range(0, rows, size)]
        ranges = np.full((len(self._watches), 2), np.nan, np.float32)  # one chunk: its own range
        if len(chunks) > 1:  # the histogram range of all chunks first
            first = [self._run(chunk, ranges) for chunk in chunks]
            for i, watch in enumerate(self._watches):
                if watch.path in first[0]:
                    low = min(float(c[watch.path]["sums"]["low"]) for c in first)
                    high = max(float(c[watch.path]["sums"]["high"]) for c in first)
                    ranges[i] = (low, high if high > low else low + 1.0) if np.isfinite(low) else (0.0, 1.0)
        read = [self._run(chunk, ranges) for chunk in chunks]
        results = {}
        for path in read[0]:
            stats = finalize(merge([c[path]["sums"] for c in read]), self.bins)
            if "unit0" in read[0][path]:
                stats["preact"] = nearest_rank_percentiles(np.concatenate([c[path]["unit0"] for c in read]))
            results[path] = stats
        return results

    def _run(self, chunk, ranges) -> dict:
        out = self._compute(_probe.to_tensors(chunk), keras.ops.convert_to_tensor(ranges))
        return keras.tree.map_structure(keras.ops.convert_to_numpy, out)

    def _charts(self) -> dict:
        charts = {"activation mean per layer": r"activation_mean/.*", "activation std per layer": r"activation_std/.*"}
        families = {w.family for w in self._watches}
        if "relu" in families:
            charts["dead-unit fraction per layer"] = r"dead_fraction/.*"
            charts["zero fraction per layer"] = r"zero_fraction/.*"
        if "smooth" in families:
            charts["near-zero fraction per layer"] = r"near_zero_fraction/.*"
        if families & {"tanh", "sigmoid"}:
            charts["saturation per layer"] = r"saturation/.*"
        for w in self._watches:
            if w.preactivation:
                charts[f"pre-activation percentiles (BN paper Fig. 1): {w.path}"] = rf"preact/{w.path}/p\d+"
        return charts

    # --- logging ------------------------------------------------------------------------
    def _attach(self):
        self._last_read = None  # the budget starts afresh with each fit

    def on_epoch_end(self, epoch, logs=None):
        self._epoch_end = True
        try:
            super().on_epoch_end(epoch, logs)
        finally:
            self._epoch_end = False

    def _over_budget(self, now: float) -> bool:
        """True when a scheduled read now would push the reads over `max_overhead`."""
        if self.max_overhead is None or self._epoch_end or self._last_read is None:
            return False
        cost, end = self._last_read
        return cost > self.max_overhead * (now - end)

    def _log_step(self, step):
        if self._compute is None:
            return
        start = self._clock()
        if self._over_budget(start):
            self.skipped_reads += 1
            return
        try:
            self._read_and_write(step)
        finally:
            end = self._clock()
            self._last_read = (end - start, end)

    def _read_and_write(self, step):
        results = self._results()
        self._warn_silent(results)
        scalars, histograms = {}, {}
        for watch in self._watches:
            stats = results.get(watch.path)
            if stats is None:
                continue
            path = watch.path
            scalars[f"activation_mean/{path}"] = stats["mean"]
            scalars[f"activation_std/{path}"] = stats["std"]
            scalars[f"nonfinite/activations/{path}"] = stats["nonfinite"]
            for name in ("dead_fraction", "zero_fraction", "near_zero_fraction", "saturation"):
                if name in stats:
                    scalars[f"{name}/{path}"] = stats[name]
            for q, value in zip(PERCENTILES, stats.get("preact", ())):
                scalars[f"preact/{path}/p{q}"] = value
            histograms[path] = stats["histogram"]
        self.latest_histograms = histograms
        with self.writers.writing("train", step) as write:
            write.scalars(scalars)
            for path, (edges, counts) in histograms.items():
                write.histogram_buckets(f"activation_hist/{path}", edges, counts)

    def _warn_silent(self, results) -> None:
        silent = [w.path for w in self._watches if w.path not in results and w.path not in self._silent]
        if silent:
            self._silent.update(silent)
            _warnings.warn(
                f"keras_bn ActivationStats: model {self.model.name!r} did not call "
                f"{', '.join(repr(p) for p in silent)} on the probe (or got several output tensors), "
                f"so no statistics are written "
                f"for {'it' if len(silent) == 1 else 'them'}. Watch layers the forward pass uses "
                f"(layers=[...]).",
                UserWarning,
            )

    def _draw(self, step):
        from keras_bn.callbacks._figure_process import draw_png

        if self.latest_histograms:
            image = draw_png("activation_histogram_grid", self.latest_histograms, title=f"activations, step {step}")
            with self.writers.writing("train", step) as write:
                write.image("figures/activation_histograms", image)

    def get_config(self):
        return {
            **super().get_config(),
            "layers": self.layers,
            "bins": self.bins,
            "saturation_threshold": self.saturation_threshold,
            "near_zero": self.near_zero,
            "max_probe_samples": self.max_probe_samples,
            "max_probe_mb": self.max_probe_mb,
            "max_overhead": self.max_overhead,
        }


def _refuse_removed_options(removed: dict) -> None:
    replaced = {
        "tanh_threshold": "saturation_threshold (|y| > t for tanh-like outputs)",
        "sigmoid_band": "saturation_threshold (|2y - 1| > t for sigmoid-like outputs: one definition for both)",
    }
    for name, value in removed.items():
        if name in replaced:
            raise TypeError(
                f"`{name}` was replaced by {replaced[name]}. Received: {name}={value!r}"
            )
        raise TypeError(f"ActivationStats got an unexpected option `{name}`. Received: {name}={value!r}")
