"""The one walk over a model's layers (every keras-bn module that looks for layers uses it), and
the grouping of a model's variables by layer.

The descent rule:

- A **model** (a nested Functional, a Sequential inside a Functional, a subclassed model) is
  never itself a layer of the walk: its layers are walked, under its name.
- Every other layer is a **unit**: what the diagnostics report on, under its *path* (its name
  prefixed by the names of the models that hold it, ``"encoder/block1_relu"``; flat keras-bn
  models have plain names). A unit with sublayers (``keras_bn.DenseBlock``, a user's layer
  holding other layers, an LSTM holding its cell) counts as one layer.
- ``parts=True`` also walks into units: a unit's sublayers follow it under its path
  (``"user_block/dense"``), models inside them walked as above. Tools that look for one kind
  of layer wherever it sits (`check_batchnorm` for BatchNormalization and dropout) use it.
- Each layer is yielded once, at its first path, inputs side first (`model.layers` order).

The functional graph itself (which layer feeds which) is `fold_batchnorm`'s, read from the
model's nodes in `keras_bn._keras_internals`, not a walk over layers.

Usage::

    for path, layer in iter_layers(model): ...
    bns = [layer for _, layer in iter_layers(model, parts=True)
           if isinstance(layer, keras.layers.BatchNormalization)]
    names, group_of_variable = variable_groups(model)
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np

from keras_bn import _keras_internals as internals

__all__ = ["group_norms", "iter_layers", "variable_groups"]


def iter_layers(model: keras.layers.Layer, prefix: str = "", *,
                parts: bool = False) -> Iterator[tuple[str, keras.layers.Layer]]:
    """Yield ``(path, layer)`` for every unit of `model`, and with `parts` every sublayer of
    the units as well (the descent rule is in this module's docstring)."""
    seen: set[int] = set()

    def walk(parent, prefix):
        for layer in _children(parent):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            path = prefix + layer.name
            if isinstance(layer, keras.Model):
                yield from walk(layer, path + "/")
                continue
            yield path, layer
            if parts:
                yield from walk(layer, path + "/")

    yield from walk(model, prefix)


def _children(layer) -> list:
    """A model's layers (`model.layers`), or the layers a plain layer tracks directly."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return internals.direct_sublayers(layer)


def variable_groups(model: keras.Model) -> tuple[list[str], np.ndarray]:
    """Layer paths that own trainable variables, and the group index of each variable.

    Returns ``(names, groups)`` where ``groups[i]`` is the index in `names` of the layer
    owning ``model.trainable_variables[i]``; variables no layer claims go to ``"other"``.
    """
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    groups = np.full(len(position), -1, dtype=np.int64)
    names: list[str] = []
    for path, layer in iter_layers(model):
        owned = [position[id(v)] for v in layer.trainable_variables if id(v) in position]
        owned = [i for i in owned if groups[i] < 0]
        if owned:
            groups[owned] = len(names)
            names.append(path)
    if (groups < 0).any():
        groups[groups < 0] = len(names)
        names.append("other")
    return names, groups


def group_norms(sumsq: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """Per-group L2 norms from per-variable sums of squares."""
    return np.sqrt(np.bincount(groups, weights=np.asarray(sumsq, dtype=np.float64), minlength=num_groups))
