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

Usage::

    cb = keras_bn.callbacks.ActivationStats("logs/run1", probe=x_val[:256], every=100)
"""

from __future__ import annotations

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
        return {k: np.asarray(v)[:max_samples] for k, v in probe.items()}
    if isinstance(probe, (list, tuple)):
        return [np.asarray(v)[:max_samples] for v in probe]
    if hasattr(probe, "shape") and hasattr(probe, "dtype"):
        return np.asarray(probe)[:max_samples]
    raise TypeError(
        "`probe` must be an array, a list or dict of arrays (one per model input) or a "
        f"tf.data.Dataset. Received: probe of type {type(probe).__name__}"
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


def _reduce_output(tf, y, family, bins, tanh_threshold, sigmoid_band):
    """Small float32 summaries of one layer output (a graph function body)."""
    y = tf.cast(y, tf.float32)
    flat = tf.reshape(y, [-1])
    finite = tf.math.is_finite(flat)
    values = tf.boolean_mask(flat, finite)
    count = tf.maximum(tf.cast(tf.size(values), tf.float32), 1.0)
    has_values = tf.size(values) > 0
    low = tf.where(has_values, tf.reduce_min(tf.concat([values, [np.inf]], 0)), 0.0)
    high = tf.where(has_values, tf.reduce_max(tf.concat([values, [-np.inf]], 0)), 1.0)
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
    unit = tf.sort(tf.boolean_mask(unit, tf.math.is_finite(unit)))
    last = tf.maximum(tf.size(unit) - 1, 0)
    padded = tf.concat([unit, [np.nan]], 0)  # no finite value -> NaN
    ranks = [tf.cast(tf.round(q / 100.0 * tf.cast(last, tf.float32)), tf.int32) for q in PERCENTILES]
    return tf.stack([padded[rank] for rank in ranks])


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
        figures: bool = True,
        figure_secs: float = 60.0,
        writers: RunWriters | None = None,
    ):
        super().__init__(log_dir, every, figures=figures, figure_secs=figure_secs, writers=writers)
        self.max_probe_samples = check_positive_int("max_probe_samples", max_probe_samples)
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

        if not model.built or not getattr(model, "inputs", None):
            raise ValueError(
                f"ActivationStats needs a built Functional or Sequential model with known inputs; "
                f"model {model.name!r} has none yet. Build it (e.g. give Sequential a keras.Input) first."
            )
        _check_probe_shapes(model, self.probe)
        self._specs = self._watched(model)
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
        self.writers.add_charts(self._charts())

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
    def _log_step(self, step):
        if self._compute is None:
            return
        packed = self._compute(self._probe_tensors).numpy()
        results, offset = {}, 0
        for path, name, size in self._layout:
            value = packed[offset:offset + size]
            results.setdefault(path, {})[name] = value if name in ("counts", "preact") else value[0]
            offset += size
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
        }
