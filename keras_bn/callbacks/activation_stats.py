"""ActivationStats: what each layer outputs on a fixed probe batch, in inference mode.

In `set_model` the callback builds **one multi-output** ``keras.Model`` that returns the
output of every watched layer (and, for sigmoid/tanh activation layers, their input); every
`every` steps and at each epoch end it runs that probe model once on the probe batch with
``training=False`` inside one compiled function that also reduces every output on the
device, in float32, to a few numbers and a histogram, so only small summaries reach the
host. Nested Sequential/Functional models work: a watched layer inside a nested model is
reached by calling a probe of that nested model on the outer graph's tensor.

**Watched layers** (``layers=None``): every layer whose output is an activation that
`keras_bn.activations.activation_family` recognises (ReLU family, tanh, sigmoid; keras-bn's
``block*_relu`` layers and Dense/Conv layers with a fused activation alike); if the model has
none, every layer with weights. Pass ``layers=[...]`` (names, or ``"outer/inner"`` paths for
nested models) to choose.

Statistics per watched layer (finite values only; NaN/Inf are counted, then dropped):
mean, std, a histogram; for the ReLU family the dead-unit fraction (a unit, i.e. a feature
of the last axis, that is <= 0 for every probe sample and position) and the zero fraction
(share of outputs <= 0, exactly 0 for ReLU); for tanh the saturation fraction
(``|y| > tanh_threshold``), for sigmoid the share outside ``sigmoid_band``; for sigmoid/tanh
activation *layers* (whose input is the pre-activation) the 15th, 50th and 85th percentile
of the input of unit 0 over the probe batch: the BN paper's Figure 1 view over time.

**Cost.** A read runs the network forward on the probe and reduces every watched output: on
the small CNN with a 256-image probe about 70 ms, 4-5 training steps. `max_overhead` bounds
that share of training time: a scheduled read is skipped while the last read took more than
``max_overhead`` times the training time since it (epoch-end reads always happen). The
`diagnostics` preset sets it to 0.02; on its own the callback reads on every schedule.

Usage::

    cb = keras_bn.callbacks.ActivationStats("logs/run1", probe=x_val[:256], every=100)
"""

from __future__ import annotations

import time

import numpy as np

import keras

from keras_bn._validation import check_float, check_positive_int, did_you_mean
from keras_bn.activations import activation_family
from keras_bn.callbacks._base import DiagnosticCallback
from keras_bn.callbacks._layers import iter_layers
from keras_bn.callbacks._writer import RunWriters

PERCENTILES = (15, 50, 85)


def _graph_of(model: keras.Model):
    """The Functional graph of `model` (Sequential keeps one in ``_functional``), else None."""
    if hasattr(model, "_nodes_by_depth"):
        return model
    return getattr(model, "_functional", None)


def _node_of(graph, layer):
    """The node of `graph` where `layer` is called (its first one if it is called twice)."""
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is layer:
                return node
    return None


def _probe_tensors(model: keras.Model, wanted: dict, prefix: str = "") -> dict:
    """Symbolic tensors, in `model`'s own graph, for ``wanted[path] = ("output"|"input", ...)``.

    Returns ``{(path, kind): KerasTensor}``. Raises ValueError for a model without a graph.
    """
    graph = _graph_of(model)
    if graph is None:
        raise ValueError(
            f"ActivationStats needs a Functional or Sequential model to read layer outputs; "
            f"{model.name!r} is a subclassed model. Build it functionally, or use the other "
            f"callbacks (gradient norms, update ratios), which work with any model."
        )
    found = {}
    for layer in model.layers:
        path = prefix + layer.name
        node = _node_of(graph, layer)
        if isinstance(layer, keras.Model):
            inner_wanted = {p: k for p, k in wanted.items() if p.startswith(path + "/")}
            if not inner_wanted or node is None:
                continue
            inner = _probe_tensors(layer, inner_wanted, prefix=path + "/")
            keys = list(inner)
            inner_probe = keras.Model(layer.inputs, [inner[k] for k in keys], name=f"{layer.name}_probe")
            args = node.input_tensors
            outputs = inner_probe(args[0] if len(args) == 1 else list(args))
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            found.update(zip(keys, outputs))
        elif path in wanted and node is not None:
            for kind in wanted[path]:
                tensors = node.output_tensors if kind == "output" else node.input_tensors
                found[(path, kind)] = tensors[0]
    return found


def _as_probe(probe, max_samples: int):
    """The probe batch as NumPy array(s): an array, a list/dict of arrays, or a tf.data.Dataset."""
    import tensorflow as tf

    if isinstance(probe, tf.data.Dataset):
        element = next(iter(probe.take(1)))
        probe = element[0] if isinstance(element, tuple) else element
    if isinstance(probe, dict):
        return {k: _numeric(np.asarray(v))[:max_samples] for k, v in probe.items()}
    if isinstance(probe, (list, tuple)):
        return [_numeric(np.asarray(v))[:max_samples] for v in probe]
    if hasattr(probe, "shape") and hasattr(probe, "dtype"):
        return _numeric(np.asarray(probe))[:max_samples]
    raise TypeError(
        "`probe` must be an array, a list or dict of arrays (one per model input) or a "
        f"tf.data.Dataset. Received: probe of type {type(probe).__name__}"
    )


def tf_nest_first(probe):
    """The first array of a probe (an array, or a list of arrays)."""
    return probe[0] if isinstance(probe, list) else probe


def _numeric(array: np.ndarray) -> np.ndarray:
    """`array` if it holds real numbers (bool, int, float), else TypeError naming its dtype."""
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating):
        return array
    raise TypeError(
        f"`probe` must hold real numbers (float, int or bool) like the model's inputs. "
        f"Received: probe dtype={array.dtype}"
    )


def _ordered_probe(model: keras.Model, probe):
    """A dict probe as a list in the order of the model's inputs (matched by input name)."""
    if not isinstance(probe, dict):
        return probe
    names = [t.name for t in model.inputs]
    layer_names = [layer.name for layer in getattr(model, "_input_layers", [])] or names
    for keys in (names, layer_names):
        if set(keys) == set(probe):
            return [probe[k] for k in keys]
    raise ValueError(
        f"`probe` dict keys must be the model's input names {sorted(names)}. "
        f"Received: probe keys={sorted(probe)}"
    )


def _check_probe_shapes(model: keras.Model, probe) -> None:
    """Raise ValueError naming the expected and received shapes when `probe` does not fit."""
    expected = [tuple(t.shape) for t in model.inputs]
    arrays = list(probe.values()) if isinstance(probe, dict) else (probe if isinstance(probe, list) else [probe])
    received = [tuple(a.shape) for a in arrays]
    fits = len(expected) == len(received) and all(
        len(e) == len(r) and all(d is None or d == s for d, s in zip(e[1:], r[1:]))
        for e, r in zip(expected, received)
    )
    if not fits or any(r[0] == 0 for r in received):
        raise ValueError(
            f"`probe` does not fit the model's inputs: expected a batch shaped "
            f"{expected if len(expected) > 1 else expected[0]} (None = any size), received "
            f"{received if len(received) > 1 else received[0]}. Pass a slice of the inputs, "
            f"e.g. probe=x_val[:256]. Received: probe shape={received if len(received) > 1 else received[0]}"
        )


def _finite_values(tf, flat):
    """The finite entries of a flat tensor: `flat` itself when all are finite (the usual case;
    a boolean mask would copy every element and costs as much as the rest of the statistics)."""
    finite = tf.math.is_finite(flat)
    return tf.cond(tf.reduce_all(finite), lambda: flat, lambda: tf.boolean_mask(flat, finite))


def _reduce_output(tf, y, family, bins, tanh_threshold, sigmoid_band):
    """Small float32 summaries of one layer output (a graph function body)."""
    y = tf.cast(y, tf.float32)
    flat = tf.reshape(y, [-1])
    values = _finite_values(tf, flat)
    count = tf.maximum(tf.cast(tf.size(values), tf.float32), 1.0)
    has_values = tf.size(values) > 0
    low = tf.where(has_values, tf.reduce_min(values), 0.0)  # reduce_min of nothing is +inf: masked
    high = tf.where(has_values, tf.reduce_max(values), 1.0)
    high = tf.where(high > low, high, low + 1.0)
    mean = tf.reduce_sum(values) / count
    stats = {
        "mean": mean,
        "std": tf.sqrt(tf.reduce_sum(tf.square(values - mean)) / count),
        "low": low,
        "high": high,
        "counts": tf.histogram_fixed_width(values, tf.stack([low, high]), nbins=bins),
        "nonfinite": tf.size(flat) - tf.size(values),
    }
    if family == "relu":
        units = tf.reshape(y, [-1, tf.shape(y)[-1]])
        alive = tf.reduce_any(units > 0.0, axis=0)
        stats["dead_fraction"] = 1.0 - tf.reduce_mean(tf.cast(alive, tf.float32))
        stats["zero_fraction"] = tf.reduce_sum(tf.cast(values <= 0.0, tf.float32)) / count
    elif family == "tanh":
        stats["saturation"] = tf.reduce_sum(tf.cast(tf.abs(values) > tanh_threshold, tf.float32)) / count
    elif family == "sigmoid":
        outside = tf.logical_or(values < sigmoid_band[0], values > sigmoid_band[1])
        stats["saturation"] = tf.reduce_sum(tf.cast(outside, tf.float32)) / count
    return stats


def _unit_percentiles(tf, x):
    """15/50/85th percentiles of unit 0 (first feature of the last axis) of `x`, finite values only."""
    unit = tf.reshape(tf.cast(x, tf.float32), [-1, tf.shape(x)[-1]])[:, 0]
    unit = tf.sort(_finite_values(tf, unit))
    last = tf.maximum(tf.size(unit) - 1, 0)
    padded = tf.concat([unit, [np.nan]], 0)  # no finite value -> NaN
    ranks = [tf.cast(tf.round(q / 100.0 * tf.cast(last, tf.float32)), tf.int32) for q in PERCENTILES]
    return tf.stack([padded[rank] for rank in ranks])


def _chunk_sums(tf, y, family, tanh_threshold, sigmoid_band):
    """First pass over one probe chunk: sums that add up over chunks (a graph function body)."""
    y = tf.cast(y, tf.float32)
    flat = tf.reshape(y, [-1])
    values = _finite_values(tf, flat)
    sums = {
        "count": tf.size(values),
        "sum": tf.reduce_sum(values),
        "low": tf.reduce_min(values),  # +inf / -inf when empty, as the merge expects
        "high": tf.reduce_max(values),
        "nonfinite": tf.size(flat) - tf.size(values),
    }
    if family == "relu":
        sums["alive"] = tf.reduce_any(tf.reshape(y, [-1, tf.shape(y)[-1]]) > 0.0, axis=0)
        sums["zeros"] = tf.reduce_sum(tf.cast(values <= 0.0, tf.int64))
    elif family == "tanh":
        sums["saturated"] = tf.reduce_sum(tf.cast(tf.abs(values) > tanh_threshold, tf.int64))
    elif family == "sigmoid":
        outside = tf.logical_or(values < sigmoid_band[0], values > sigmoid_band[1])
        sums["saturated"] = tf.reduce_sum(tf.cast(outside, tf.int64))
    return sums


def _finite_unit0(tf, x):
    unit = tf.reshape(tf.cast(x, tf.float32), [-1, tf.shape(x)[-1]])[:, 0]
    return _finite_values(tf, unit)


def _combine_chunks(first, second, family):
    """The statistics of `_reduce_output` from per-chunk sums (`first`) and the second pass
    (``[(sum of squared deviations, histogram counts), ...]``)."""
    count = sum(int(c["count"]) for c in first)
    denominator = np.float32(max(count, 1))
    low = np.float32(min(float(c["low"]) for c in first)) if count else np.float32(0.0)
    high = np.float32(max(float(c["high"]) for c in first)) if count else np.float32(1.0)
    high = high if high > low else np.float32(low + np.float32(1.0))
    stats = {
        "mean": np.float32(sum(float(c["sum"]) for c in first) / float(denominator)),
        "std": np.sqrt(np.float32(sum(float(sq) for sq, _ in second)) / denominator),
        "low": low,
        "high": high,
        "counts": np.sum([counts for _, counts in second], axis=0).astype(np.float32),
        "nonfinite": np.float32(sum(int(c["nonfinite"]) for c in first)),
    }
    if family == "relu":
        alive = np.any([c["alive"] for c in first], axis=0)
        stats["dead_fraction"] = np.float32(1.0 - np.mean(alive.astype(np.float32)))
        stats["zero_fraction"] = np.float32(sum(int(c["zeros"]) for c in first) / float(denominator))
    elif family in ("tanh", "sigmoid"):
        stats["saturation"] = np.float32(sum(int(c["saturated"]) for c in first) / float(denominator))
    return stats


def _percentiles_of(values: np.ndarray) -> np.ndarray:
    """`_unit_percentiles` on the host, with the same ranks (round half to even, float32)."""
    values = np.sort(values.astype(np.float32))
    if values.size == 0:
        return np.full(len(PERCENTILES), np.nan, np.float32)
    last = np.float32(values.size - 1)
    return np.array([values[int(np.round(np.float32(q / 100.0) * last))] for q in PERCENTILES], np.float32)


class ActivationStats(DiagnosticCallback):
    """Logs per-layer activation statistics on a fixed probe batch (inference mode).

    Args:
        log_dir: the TensorBoard run directory (``<log_dir>/train`` is written).
        probe: the probe inputs: an array (e.g. ``x_val[:256]``), a list/dict of arrays for
            a multi-input model, or a ``tf.data.Dataset`` (its first batch is used).
        every: log every this many optimizer steps (and at each epoch end).
        layers: names or paths of the layers to watch; None = every activation layer (see
            the module docstring).
        bins: histogram buckets.
        tanh_threshold: a tanh output with ``|y|`` above this counts as saturated.
        sigmoid_band: a sigmoid output outside ``(low, high)`` counts as saturated.
        max_probe_samples: at most this many probe samples are used.
        max_probe_mb: memory bound, in MiB, for the watched layers' outputs (float32) on the
            probe. A probe whose watched outputs fit is reduced in one pass; a larger one is
            streamed in chunks of samples that fit (two passes over the chunks: sums, then
            squared deviations and histogram counts), so no more than about this much of
            layer outputs is held at once. Results equal the one-pass ones up to float
            rounding of the sums.
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

    def __init__(
        self,
        log_dir,
        probe,
        every: int = 100,
        *,
        layers=None,
        bins: int = 30,
        tanh_threshold: float = 0.97,
        sigmoid_band=(0.03, 0.97),
        max_probe_samples: int = 512,
        max_probe_mb: float = 256.0,
        max_overhead: float | None = None,
        figures: bool = True,
        figure_secs: float = 60.0,
        writers: RunWriters | None = None,
    ):
        super().__init__(log_dir, every, figures=figures, figure_secs=figure_secs, writers=writers)
        self.max_overhead = (
            None if max_overhead is None
            else check_float("max_overhead", max_overhead, low=0.0, high=1.0, low_inclusive=False)
        )
        self._clock = time.perf_counter  # tests replace it
        self._last_read = None  # (cost in s, end time) of the last read
        self._epoch_end = False
        self.skipped_reads = 0
        self.max_probe_samples = check_positive_int("max_probe_samples", max_probe_samples)
        self.max_probe_mb = check_float("max_probe_mb", max_probe_mb, low=0.0, low_inclusive=False)
        self.probe = _as_probe(probe, self.max_probe_samples)
        if layers is not None:
            if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
                raise TypeError(
                    f"`layers` must be a list of layer names (or None for every activation layer). "
                    f"Received: layers={layers!r}"
                )
            layers = list(layers)
        self.layers = layers
        self.bins = check_positive_int("bins", bins)
        self.tanh_threshold = check_float("tanh_threshold", tanh_threshold, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        band = tuple(sigmoid_band) if isinstance(sigmoid_band, (list, tuple)) else None
        if band is None or len(band) != 2 or not all(isinstance(b, (int, float)) for b in band) or not 0 <= band[0] < band[1] <= 1:
            raise ValueError(
                f"`sigmoid_band` must be a pair (low, high) with 0 <= low < high <= 1. "
                f"Received: sigmoid_band={sigmoid_band!r}"
            )
        self.sigmoid_band = (float(band[0]), float(band[1]))
        self.latest_histograms: dict[str, tuple] = {}
        self._compute = None
        self._chunk_rows = None
        self._prepared_for = None  # (model, probe) the traced probe functions were made for

    # --- set-up -------------------------------------------------------------------------
    def _watched(self, model) -> list[tuple[str, str | None, bool]]:
        """``(path, family, with_preactivation)`` for each watched layer, input side first."""
        every_layer = list(iter_layers(model))
        if self.layers is None:
            chosen = [(p, l) for p, l in every_layer if activation_family(l) is not None]
            chosen = chosen or [(p, l) for p, l in every_layer if l.weights]
        else:
            by_path = dict(every_layer)
            by_name = {}
            for path, layer in every_layer:
                by_name.setdefault(layer.name, []).append(path)
            chosen = []
            for name in self.layers:
                paths = [name] if name in by_path else by_name.get(name, [])
                if len(paths) != 1:
                    listed = ", ".join(repr(p) for p in by_path)
                    reason = "is ambiguous (give its path)" if paths else "is not a layer of the model"
                    raise ValueError(
                        f"`layers` entry {name!r} {reason}. Expected names among: {listed}."
                        f"{did_you_mean(name, list(by_path))} Received: layers={self.layers!r}"
                    )
                chosen.append((paths[0], by_path[paths[0]]))
        return [
            (path, activation_family(layer), activation_family(layer) in ("tanh", "sigmoid") and not layer.weights)
            for path, layer in chosen
        ]

    def set_model(self, model):
        super().set_model(model)
        import tensorflow as tf

        if self._prepared_for is not None and self._prepared_for[0] is model and self._prepared_for[1] is self.probe:
            return  # a further fit of the same model and probe: keep the traced functions
        if _graph_of(model) is None:
            raise ValueError(
                f"ActivationStats needs a Functional or Sequential model to read layer outputs; "
                f"{model.name!r} is a subclassed model ({type(model).__name__}). Build it "
                f"functionally, or leave the activation statistics out (diagnostics(..., probe=None)): "
                f"the other callbacks (loss, gradient norms, update ratios) work with any model."
            )
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError(
                f"ActivationStats needs a built Functional or Sequential model with known inputs; "
                f"model {model.name!r} has none yet. Build it (e.g. give Sequential a keras.Input) first."
            )
        self.probe = _ordered_probe(model, self.probe)
        _check_probe_shapes(model, self.probe)
        self._specs = self._watched(model)
        if not self._specs:
            raise ValueError(
                f"ActivationStats found no layer to watch in model {model.name!r}: it has no "
                f"activation layer (ReLU family, tanh, sigmoid) and no layer with weights. Pass "
                f"layers=[...] naming the layers to watch, or probe=None to diagnostics()."
            )
        wanted = {path: ("output", "input") if pre else ("output",) for path, _, pre in self._specs}
        tensors = _probe_tensors(model, wanted)
        self._keys = [k for k in ((p, kind) for p, kinds in wanted.items() for kind in kinds) if k in tensors]
        probe_model = keras.Model(model.inputs, [tensors[k] for k in self._keys], name=f"{model.name}_probe")
        families = {path: family for path, family, _ in self._specs}
        options = (self.bins, self.tanh_threshold, self.sigmoid_band)

        layout = self._layout = []  # (path, statistic, size) of each slice of the packed result

        @tf.function(reduce_retracing=True)
        def compute(inputs):
            outputs = probe_model(inputs, training=False)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            pieces = []
            layout.clear()
            for (path, kind), tensor in zip(self._keys, outputs):
                if kind == "output":
                    stats = _reduce_output(tf, tensor, families[path], *options)
                else:
                    stats = {"preact": _unit_percentiles(tf, tensor)}
                for name, value in stats.items():
                    value = tf.reshape(tf.cast(value, tf.float32), [-1])
                    layout.append((path, name, int(value.shape[0])))
                    pieces.append(value)
            return tf.concat(pieces, 0)  # one small vector: one host transfer

        self._compute = compute
        self._probe_tensors = tf.nest.map_structure(tf.convert_to_tensor, self.probe)
        self._chunk_rows = self._rows_per_chunk(probe_model)
        if self._chunk_rows is not None:
            self._build_chunked(tf, probe_model, families)
        self.writers.add_charts(self._charts())
        self._prepared_for = (model, self.probe)

    def _rows_per_chunk(self, probe_model) -> int | None:
        """Probe rows per chunk when the watched outputs exceed `max_probe_mb`, else None."""
        per_sample = 0
        for tensor in probe_model.outputs:
            dims = tuple(tensor.shape)[1:]
            if any(d is None for d in dims):
                return None  # unknown sizes: one pass
            per_sample += 4 * int(np.prod(dims, dtype=np.int64))
        rows = len(tf_nest_first(self.probe))
        chunk = max(1, int(self.max_probe_mb * 2**20 // max(per_sample, 1)))
        return chunk if chunk < rows else None

    def _build_chunked(self, tf, probe_model, families):
        keys, options = self._keys, (self.tanh_threshold, self.sigmoid_band)

        def outputs_of(inputs):
            outputs = probe_model(inputs, training=False)
            return outputs if isinstance(outputs, (list, tuple)) else [outputs]

        @tf.function(reduce_retracing=True)
        def first_pass(inputs):
            return [
                _chunk_sums(tf, t, families[path], *options) if kind == "output" else {"unit0": _finite_unit0(tf, t)}
                for (path, kind), t in zip(keys, outputs_of(inputs))
            ]

        @tf.function(reduce_retracing=True)
        def second_pass(inputs, means, lows, highs):
            result, j = [], 0
            for (path, kind), t in zip(keys, outputs_of(inputs)):
                if kind == "output":
                    values = _finite_values(tf, tf.reshape(tf.cast(t, tf.float32), [-1]))
                    squares = tf.reduce_sum(tf.square(values - means[j]))
                    counts = tf.histogram_fixed_width(values, tf.stack([lows[j], highs[j]]), nbins=self.bins)
                    result.append((squares, counts))
                    j += 1
            return result

        self._first_pass, self._second_pass = first_pass, second_pass

    def _chunks(self):
        import tensorflow as tf

        rows = len(tf_nest_first(self.probe))
        for start in range(0, rows, self._chunk_rows):
            yield tf.nest.map_structure(lambda t: t[start:start + self._chunk_rows], self._probe_tensors)

    def _chunked_results(self) -> dict:
        """Per-path statistics streamed over probe chunks (see `max_probe_mb`)."""
        import tensorflow as tf

        to_numpy = lambda structure: tf.nest.map_structure(lambda t: t.numpy(), structure)  # noqa: E731
        first = [to_numpy(self._first_pass(chunk)) for chunk in self._chunks()]
        output_keys = [i for i, (_, kind) in enumerate(self._keys) if kind == "output"]
        partial = {}
        for i in output_keys:
            sums = [chunk[i] for chunk in first]
            partial[i] = _combine_chunks(sums, [(0.0, np.zeros(self.bins))], None)
        means = np.array([partial[i]["mean"] for i in output_keys], np.float32)
        lows = np.array([partial[i]["low"] for i in output_keys], np.float32)
        highs = np.array([partial[i]["high"] for i in output_keys], np.float32)
        second = [to_numpy(self._second_pass(chunk, means, lows, highs)) for chunk in self._chunks()]
        families = {path: family for path, family, _ in self._specs}
        results = {}
        for j, i in enumerate(output_keys):
            path = self._keys[i][0]
            results.setdefault(path, {}).update(
                _combine_chunks([chunk[i] for chunk in first], [chunk[j] for chunk in second], families[path])
            )
        for i, (path, kind) in enumerate(self._keys):
            if kind == "input":
                values = np.concatenate([chunk[i]["unit0"] for chunk in first])
                results.setdefault(path, {})["preact"] = _percentiles_of(values)
        return results

    def _one_pass_results(self) -> dict:
        packed = self._compute(self._probe_tensors).numpy()
        results, offset = {}, 0
        for path, name, size in self._layout:
            value = packed[offset:offset + size]
            results.setdefault(path, {})[name] = value if name in ("counts", "preact") else value[0]
            offset += size
        return results

    def _charts(self) -> dict:
        charts = {"activation mean per layer": r"activation_mean/.*", "activation std per layer": r"activation_std/.*"}
        families = {family for _, family, _ in self._specs}
        if "relu" in families:
            charts["dead-unit fraction per layer"] = r"dead_fraction/.*"
            charts["zero fraction per layer"] = r"zero_fraction/.*"
        if families & {"tanh", "sigmoid"}:
            charts["saturation per layer"] = r"saturation/.*"
        for path, _, pre in self._specs:
            if pre:
                charts[f"pre-activation percentiles (BN paper Fig. 1): {path}"] = rf"preact/{path}/p\d+"
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
        results = self._chunked_results() if self._chunk_rows is not None else self._one_pass_results()
        scalars, histograms = {}, {}
        for path, family, pre in self._specs:
            stats = results[path]
            scalars[f"activation_mean/{path}"] = stats["mean"]
            scalars[f"activation_std/{path}"] = stats["std"]
            scalars[f"nonfinite/activations/{path}"] = stats["nonfinite"]
            for name in ("dead_fraction", "zero_fraction", "saturation"):
                if name in stats:
                    scalars[f"{name}/{path}"] = stats[name]
            if pre:
                for q, value in zip(PERCENTILES, stats["preact"]):
                    scalars[f"preact/{path}/p{q}"] = value
            edges = np.linspace(float(stats["low"]), float(stats["high"]), self.bins + 1)
            histograms[path] = (edges, stats["counts"])
        self.latest_histograms = histograms
        with self.writers.writing("train", step) as write:
            write.scalars(scalars)
            for path, (edges, counts) in histograms.items():
                write.histogram_buckets(f"activation_hist/{path}", edges, counts)

    def _draw(self, step):
        from keras_bn.callbacks.figures import activation_histogram_grid

        if self.latest_histograms:
            image = activation_histogram_grid(self.latest_histograms, title=f"activations, step {step}")
            with self.writers.writing("train", step) as write:
                write.image("figures/activation_histograms", image)

    def get_config(self):
        return {
            **super().get_config(),
            "layers": self.layers,
            "bins": self.bins,
            "tanh_threshold": self.tanh_threshold,
            "sigmoid_band": self.sigmoid_band,
            "max_probe_samples": self.max_probe_samples,
            "max_probe_mb": self.max_probe_mb,
            "max_overhead": self.max_overhead,
        }
