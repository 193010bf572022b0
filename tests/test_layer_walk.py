"""Tests for keras_bn/callbacks/_layers.py: the one layer walk (nested models walked, units kept
whole, `parts` into units, each layer once) and the grouping of variables by layer."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

import keras_bn
from keras_bn.callbacks._layers import group_norms, iter_layers, variable_groups


class Holder(keras.layers.Layer):
    """A user's layer with sublayers: a Dense and a keras-bn block."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.proj = keras.layers.Dense(6, name="proj")
        self.block = keras_bn.DenseBlock(4, norm="batch", activation="relu", name="blk")

    def call(self, inputs, training=None):
        return self.block(self.proj(inputs), training=training)


def _paths(model, **kwargs):
    return [path for path, _ in iter_layers(model, **kwargs)]


def test_a_nested_functional_is_walked_under_its_name_and_never_yielded():
    inner_in = keras.Input((3,), name="inner_x")
    inner = keras.Model(inner_in, keras.layers.Dense(2, name="inner_dense")(inner_in), name="inner")
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(1, name="head")(inner(keras.layers.Dense(3, name="first")(x))))
    assert _paths(model) == ["x", "first", "inner/inner_x", "inner/inner_dense", "head"]
    assert _paths(model) == _paths(model, parts=True)  # no unit has sublayers
    assert all(not isinstance(layer, keras.Model) for _, layer in iter_layers(model))


def test_a_sequential_inside_a_functional_is_walked_like_a_nested_functional():
    seq = keras.Sequential([keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")], name="seq")
    x = keras.Input((4,), name="x")
    model = keras.Model(x, seq(x))
    walked = list(iter_layers(model))
    assert [p for p, _ in walked] == ["x", "seq/a", "seq/b"]
    assert walked[1][1] is seq.layers[0] and walked[2][1] is seq.layers[1]


def test_a_custom_layer_with_sublayers_is_one_unit_and_parts_walks_into_it():
    x = keras.Input((5,), name="x")
    holder = Holder(name="holder")
    model = keras.Model(x, keras.layers.Dense(2, name="head")(holder(x)))
    assert _paths(model) == ["x", "holder", "head"]
    block = holder.block
    assert _paths(model, parts=True) == (
        ["x", "holder", "holder/proj", "holder/blk"]
        + [f"holder/blk/{layer.name}" for layer in block.sublayers] + ["head"])
    found = [layer for _, layer in iter_layers(model, parts=True) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(found) == 1 and found[0] in block.sublayers


def test_a_shared_layer_is_walked_once_at_its_first_path():
    shared = keras.layers.Dense(3, name="shared")
    x = keras.Input((3,), name="x")
    first = keras.Model(x, shared(x), name="first")
    second_in = keras.Input((3,), name="y")
    second = keras.Model(second_in, shared(second_in), name="second")
    z = keras.Input((3,), name="z")
    model = keras.Model(z, second(first(z)))
    paths = _paths(model)
    assert paths.count("first/shared") == 1 and "second/shared" not in paths


def test_variable_groups_give_each_variable_to_its_unit_and_norms_match_numpy():
    x = keras.Input((5,), name="x")
    holder = Holder(name="holder")
    model = keras.Model(x, keras.layers.Dense(2, name="head")(holder(x)))
    names, groups = variable_groups(model)
    assert names == ["holder", "head"]  # a unit owns its sublayers' variables
    owner = {id(v): name for name, layer in (("holder", holder), ("head", model.get_layer("head")))
             for v in layer.trainable_variables}
    assert [names[g] for g in groups] == [owner[id(v)] for v in model.trainable_variables]
    sumsq = np.array([float(np.sum(np.square(v.numpy()))) for v in model.trainable_variables])
    norms = group_norms(sumsq, groups, len(names))
    for i, name in enumerate(names):
        expected = np.sqrt(sum(s for s, g in zip(sumsq, groups) if g == i))
        assert norms[i] == np.float64(expected)


def test_no_other_module_walks_a_layers_sublayers_on_its_own():
    root = Path(__file__).resolve().parents[1] / "keras_bn"
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if "direct_sublayers(" in p.read_text() or "_flatten_layers(" in p.read_text())
    assert users == ["_keras_internals/__init__.py", "callbacks/_layers.py"], users
