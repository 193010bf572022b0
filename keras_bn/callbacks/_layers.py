"""Walk a model's layers (into nested models) and group its variables by layer.

A layer's *path* is its name, prefixed by the names of the nested models that hold it
(``"encoder/block1_relu"``); flat keras-bn models have plain names (``"block1_relu"``).
Composite layers that are not models (``keras_bn.DenseBlock``) count as one layer.

Usage::

    names, group_of_variable = variable_groups(model)
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np


def iter_layers(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """Yield ``(path, layer)`` for every layer of `model`, descending into nested models."""
    for layer in model.layers:
        path = prefix + layer.name
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer, prefix=path + "/")
        else:
            yield path, layer


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
