"""The probe: its input batch, the layers it watches, and their outputs on any model style.

Layer outputs are collected the way fastai's hooks do it: while the probe runs the model
(``model(probe, training=False)`` inside a traced function), the ``call`` of each watched
layer is wrapped so that its first output (and, for bounded activation layers, its input) is
kept; the wrappers are removed when the pass ends. Sequential (built or not), Functional,
nested and subclassed models are therefore read the same way, through public APIs only.

Usage (inside keras-bn)::

    watches = watched_layers(model, names=None)
    with LayerTaps(watches) as taps:
        model(x, training=False)
    taps.outputs["block1_relu"], taps.inputs["block1_sigmoid"]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import keras

from keras_bn import _warnings
from keras_bn._validation import did_you_mean
from keras_bn.activations import activation_family
from keras_bn.callbacks._layers import iter_layers
from keras_bn.callbacks._reductions import chunk_sums
from keras_bn.layers import ConvBlock, DenseBlock

__all__ = [
    "LayerTaps",
    "Watch",
    "as_probe",
    "bytes_per_sample",
    "check_probe_fits",
    "order_probe",
    "probe_pass",
    "probe_rows",
    "slice_probe",
    "to_tensors",
    "watched_layers",
]


@dataclass(frozen=True)
class Watch:
    """One watched layer: its path (the tag suffix), the layer whose call is tapped, the
    family of its output, whether its input (the pre-activation) is kept too, and the axis
    of its units."""

    path: str
    layer: keras.layers.Layer
    family: str | None
    preactivation: bool
    feature_axis: int = -1


def _tapped_layer(layer):
    """The layer whose output is `layer`'s activation: a keras-bn block's activation sublayer
    (its output is the block's only with the norm before the activation), else `layer`."""
    if isinstance(layer, (DenseBlock, ConvBlock)):
        for sublayer in layer.sublayers:
            if activation_family(sublayer) is not None:
                return sublayer
    return layer


def _feature_axis(layer) -> int:
    return 1 if getattr(layer, "data_format", None) == "channels_first" else -1


def watched_layers(model: keras.Model, names=None) -> list[Watch]:
    """The layers to watch, input side first: `names` (names or ``outer/inner`` paths), or
    every layer whose output has an activation family, or, if none has, every layer with
    weights. Raises ValueError naming an unknown or ambiguous entry of `names`."""
    every_layer = list(iter_layers(model))
    if names is None:
        chosen = [(p, l) for p, l in every_layer if activation_family(l) is not None]
        chosen = chosen or [(p, l) for p, l in every_layer if l.weights]
    else:
        by_path = dict(every_layer)
        by_name: dict[str, list[str]] = {}
        for path, layer in every_layer:
            by_name.setdefault(layer.name, []).append(path)
        chosen = []
        for name in names:
            paths = [name] if name in by_path else by_name.get(name, [])
            if len(paths) != 1:
                listed = ", ".join(repr(p) for p in by_path)
                reason = "is ambiguous (give its path)" if paths else "is not a layer of the model"
                raise ValueError(
                    f"`layers` entry {name!r} {reason}. Expected names among: {listed}."
                    f"{did_you_mean(name, list(by_path))} Received: layers={list(names)!r}"
                )
            chosen.append((paths[0], by_path[paths[0]]))
    watches = []
    for path, layer in chosen:
        tapped = _tapped_layer(layer)
        family = activation_family(layer)
        bounded = family in ("tanh", "sigmoid") and not tapped.weights
        watches.append(Watch(path, tapped, family, bounded, _feature_axis(layer)))
    return watches


class LayerTaps:
    """Context manager: while open, each watched layer's call keeps its first output (and
    input, for `Watch.preactivation`) in ``outputs[path]`` / ``inputs[path]``. Closing it
    restores every layer's ``call`` exactly as it was, also when the pass raises.

    `all_layers=True` also records the per-sample byte size of every leaf layer's inputs
    plus outputs in ``sizes`` (the probe's memory estimate)."""

    def __init__(self, watches: list[Watch], all_layers_of: keras.Model | None = None):
        self.watches = watches
        self.outputs: dict = {}
        self.inputs: dict = {}
        self.sizes: list[int] = []
        self._sizing = all_layers_of
        self._undo: list = []

    def __enter__(self):
        by_layer: dict[int, list[Watch]] = {}
        for watch in self.watches:
            by_layer.setdefault(id(watch.layer), []).append(watch)
        layers = {id(w.layer): w.layer for w in self.watches}
        if self._sizing is not None:
            for _, layer in iter_layers(self._sizing):
                layers.setdefault(id(layer), layer)
        try:
            for key, layer in layers.items():
                self._wrap(layer, by_layer.get(key, []))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wrap(self, layer, watches):
        previous = vars(layer).get("call")  # an instance-level call someone else set, if any
        original = layer.call

        def tapped_call(*args, **kwargs):
            outputs = original(*args, **kwargs)
            for watch in watches:
                if watch.path not in self.outputs:
                    self.outputs[watch.path] = outputs
                    if watch.preactivation and args:
                        self.inputs[watch.path] = args[0]
            if self._sizing is not None:
                self.sizes.append(bytes_per_sample(args) + bytes_per_sample(outputs))
            return outputs

        layer.call = tapped_call
        self._undo.append((layer, previous))

    def __exit__(self, *exc):
        while self._undo:
            layer, previous = self._undo.pop()
            if previous is None:
                vars(layer).pop("call", None)
            else:
                layer.call = previous
        return False


def bytes_per_sample(structure) -> int:
    """float32 bytes per sample of the tensors in `structure` (unknown dims count as 0)."""
    total = 0
    for tensor in keras.tree.flatten(structure):
        shape = getattr(tensor, "shape", None)
        if shape is None or len(shape) == 0:
            continue
        dims = [d for d in tuple(shape)[1:]]
        if any(d is None for d in dims):
            continue
        total += 4 * int(np.prod(dims, dtype=np.int64))
    return total


# --- the probe batch -------------------------------------------------------------------------
def as_probe(probe, max_samples: int):
    """The probe batch as NumPy array(s), cut to `max_samples` rows (a view where possible).

    Accepts an array, a list/dict of arrays (one per model input) or a ``tf.data.Dataset``
    (its first batch). Warns once when the probe is cut.
    """
    if _is_dataset(probe):
        element = next(iter(probe.take(1)))
        probe = element[0] if isinstance(element, tuple) else element
    if isinstance(probe, dict):
        arrays = {k: _numeric(v) for k, v in probe.items()}
        items = list(arrays.values())
    elif isinstance(probe, (list, tuple)):
        arrays = [_numeric(v) for v in probe]
        items = arrays
    elif hasattr(probe, "shape") and hasattr(probe, "dtype"):
        arrays = _numeric(probe)
        items = [arrays]
    else:
        raise TypeError(
            "`probe` must be an array, a list or dict of arrays (one per model input) or a "
            f"tf.data.Dataset. Received: probe of type {type(probe).__name__}"
        )
    if not items:
        raise ValueError(
            "`probe` is empty: pass a batch of inputs, e.g. probe=x_val[:256] (one array per "
            "model input for a multi-input model), or probe=None to diagnostics() to leave the "
            f"activation statistics out. Received: probe={probe!r}"
        )
    rows = {a.shape[0] if a.ndim else 0 for a in items}
    if 0 in rows or len(rows) != 1:
        raise ValueError(
            f"`probe` must hold at least one sample, the same number in each array. Received: "
            f"probe with shapes {[a.shape for a in items]}"
        )
    (count,) = rows
    if count > max_samples:
        _warnings.warn(
            f"keras_bn ActivationStats: the probe has {count} samples; only the first "
            f"{max_samples} are used (max_probe_samples={max_samples}). Pass a larger "
            f"`max_probe_samples` (read cost and memory grow with it) or a smaller probe.",
            UserWarning,
        )
        cut = lambda a: a[:max_samples]  # noqa: E731
        arrays = {k: cut(v) for k, v in arrays.items()} if isinstance(arrays, dict) else (
            [cut(a) for a in arrays] if isinstance(arrays, list) else cut(arrays))
    return arrays


def _is_dataset(probe) -> bool:
    try:
        import tensorflow as tf
    except ImportError:  # another backend: no tf.data
        return False
    return isinstance(probe, tf.data.Dataset)


def _numeric(value) -> np.ndarray:
    """`value` as an array if it holds real numbers (bool, int, float), else TypeError."""
    array = np.asarray(value)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating):
        return array
    raise TypeError(
        f"`probe` must hold real numbers (float, int or bool) like the model's inputs. "
        f"Received: probe dtype={array.dtype}"
    )


def probe_rows(probe) -> int:
    """The number of samples of a probe from `as_probe`."""
    first = next(iter(probe.values())) if isinstance(probe, dict) else (probe[0] if isinstance(probe, list) else probe)
    return int(first.shape[0])


def slice_probe(probe, start: int, stop: int):
    """Rows ``start:stop`` of every array of `probe` (views)."""
    if isinstance(probe, dict):
        return {k: v[start:stop] for k, v in probe.items()}
    if isinstance(probe, list):
        return [v[start:stop] for v in probe]
    return probe[start:stop]


def _model_inputs(model):
    """The symbolic inputs of a Functional or built Sequential model, else None (subclassed)."""
    try:
        return list(model.inputs) if model.inputs is not None else None
    except (AttributeError, ValueError):
        return None


def order_probe(model: keras.Model, probe):
    """A dict probe as a list in the order of the model's inputs (matched by input name);
    other probes (and dict probes of subclassed models, which take dicts as given) unchanged."""
    inputs = _model_inputs(model)
    if not isinstance(probe, dict) or inputs is None:
        return probe
    names = [t.name for t in inputs]
    if set(names) == set(probe):
        return [probe[k] for k in names]
    raise ValueError(
        f"`probe` dict keys must be the model's input names {sorted(names)}. "
        f"Received: probe keys={sorted(probe)}"
    )


def check_probe_fits(model: keras.Model, probe) -> None:
    """Raise ValueError naming the expected and received shapes when `probe` does not fit
    the model's declared inputs (models without declared inputs are checked by a first call)."""
    inputs = _model_inputs(model)
    if inputs is None:
        return
    expected = [tuple(t.shape) for t in inputs]
    arrays = list(probe.values()) if isinstance(probe, dict) else (probe if isinstance(probe, list) else [probe])
    received = [tuple(a.shape) for a in arrays]
    fits = len(expected) == len(received) and all(
        len(e) == len(r) and all(d is None or d == s for d, s in zip(e[1:], r[1:]))
        for e, r in zip(expected, received)
    )
    if not fits:
        shown = received if len(received) > 1 else received[0]
        raise ValueError(
            f"`probe` does not fit the model's inputs: expected a batch shaped "
            f"{expected if len(expected) > 1 else expected[0]} (None = any size), received "
            f"{shown}. Pass a slice of the inputs, e.g. probe=x_val[:256]. Received: probe shape={shown}"
        )


# --- the traced read -------------------------------------------------------------------------
def to_tensors(structure):
    """`structure`'s arrays as backend tensors."""
    return keras.tree.map_structure(keras.ops.convert_to_tensor, structure)


def probe_pass(model, watches, options, inputs, ranges):
    """The traced read: the model on one probe chunk, each tapped output reduced to sums
    (histogram over ``ranges[i]`` for the i-th watch; NaN: the chunk's own range).

    Returns ``{path: {"sums": {...}, "unit0": values}}`` for the layers the model called.
    """
    with LayerTaps(list(watches)) as taps:
        model(inputs, training=False)
    result = {}
    for i, watch in enumerate(watches):
        y = taps.outputs.get(watch.path)
        if y is None or isinstance(y, (list, tuple, dict)):
            continue  # not called on the probe (or several outputs): reported, never a number
        hist_range = (ranges[i, 0], ranges[i, 1])
        entry = {"sums": chunk_sums(y, watch.family, hist_range=hist_range, feature_axis=watch.feature_axis, **options)}
        x = taps.inputs.get(watch.path)
        if watch.preactivation and x is not None:
            x = keras.ops.cast(x, "float32")
            x = keras.ops.moveaxis(x, watch.feature_axis, -1) if watch.feature_axis != -1 else x
            entry["unit0"] = keras.ops.reshape(x, (-1, x.shape[-1]))[:, 0]
        result[watch.path] = entry
    return result
