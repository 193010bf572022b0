"""keras_bn/_keras_internals/ is the one package that touches private Keras / TensorFlow /
TensorBoard names: every name it relies on exists in the installed versions, and no other
module of keras-bn (or recipe) names one."""

from __future__ import annotations

import ast
from pathlib import Path

from keras_bn import _keras_internals as internals

ROOT = Path(__file__).resolve().parents[1]
# Private module trees: anything imported from them is private.
PRIVATE_MODULES = ("keras.src", "tensorflow.python", "tensorboard.compat", "tensorboard.plugins",
                   "tensorboard.util", "tensorboard.backend", "tensorboard.summary.writer")
# Documented public APIs inside those trees (TensorBoard's HParams guide imports it this way).
PUBLIC_IMPORTS = [("tensorboard.plugins.hparams", ["api"])]
# Private attributes keras-bn used before they moved here, and a few more that are easy to reach for.
KNOWN_PRIVATE = {"_nodes_by_depth", "_keras_history", "_functional", "_input_layers", "_trainable_variables",
                 "_clip_gradients", "_all_reduce_sum_gradients", "_distribution_strategy", "_maybe_symbolic_build",
                 "_symbolic_build", "_distribute_strategy", "_collective_all_reduce_multi_worker",
                 "_DefaultDistributionStrategy", "_backend_update_step", "_operation_history"}


def _private_names() -> set[str]:
    names = set(KNOWN_PRIVATE)
    for _, attribute in internals.REQUIRED + internals.REQUIRED_ON_INSTANCES:
        names.update(part for part in attribute.split(".") if part.startswith("_"))
    return names | {"reduce_per_replica"}


def _uses(tree: ast.AST, names: set[str]):
    """(line, what) for each use of a private name: an attribute, a name, an import from a private
    module, or a string given to getattr/hasattr/setattr/delattr. Docstrings and comments are not uses."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            yield node.lineno, f".{node.attr}"
        elif isinstance(node, ast.Name) and node.id in names:
            yield node.lineno, node.id
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PRIVATE_MODULES):
            if (node.module, [a.name for a in node.names]) in PUBLIC_IMPORTS:
                continue
            yield node.lineno, f"from {node.module}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PRIVATE_MODULES):
                    yield node.lineno, f"import {alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in names):
            yield node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.startswith(PRIVATE_MODULES):
                yield node.lineno, dotted


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def test_every_private_name_exists():
    assert internals.REQUIRED, "the internals module lists what it relies on"
    missing = internals.missing_names()
    assert not missing, ("This Keras / TensorFlow / TensorBoard lacks private names keras-bn relies on "
                         f"(keras_bn/_keras_internals/): {missing}")


def test_missing_names_reports_a_name_that_does_not_exist(monkeypatch):
    monkeypatch.setattr(internals, "REQUIRED", internals.REQUIRED + [("keras", "_no_such_name_anywhere")])
    assert internals.missing_names() == ["keras:_no_such_name_anywhere"]


def test_no_other_module_names_a_private_keras_name():
    names = _private_names()
    offenders = []
    for path in sorted([*ROOT.glob("keras_bn/**/*.py"), *ROOT.glob("recipes/*.py")]):
        if "_keras_internals" in path.parts:  # the package that owns them
            continue
        for line, what in sorted(set(_uses(ast.parse(path.read_text()), names))):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not offenders, "private names outside keras_bn/_keras_internals/:\n" + "\n".join(offenders)


def test_the_private_name_check_sees_each_kind_of_use():
    source = (
        "from keras.src import tree\n"
        "import tensorboard.compat.proto\n"
        "x = model._nodes_by_depth\n"
        "y = getattr(optimizer, '_clip_gradients', None)\n"
        '"""docstrings may name ``_nodes_by_depth``"""  # and comments: _keras_history\n'
    )
    found = [what for _, what in _uses(ast.parse(source), _private_names())]
    assert found.count("._nodes_by_depth") == 1
    assert "from keras.src" in found and "import tensorboard.compat.proto" in found
    assert "getattr(..., '_clip_gradients')" in found and len(found) == 4


def test_a_train_function_made_by_make_train_function_is_told_from_one_the_user_assigned():
    """Keras' own (this backend's, with and without steps_per_execution) and a subclass'
    ``make_train_function`` override are remade by ``make_train_function(force=True)``; a
    function assigned from outside is not, even dressed by functools.wraps as Keras' own."""
    import functools

    import keras

    class OwnMaker(keras.Sequential):
        def make_train_function(self, force=False):
            super().make_train_function(force)
            inner = self.train_function

            def counted(*args, **kwargs):
                return inner(*args, **kwargs)

            self.train_function = counted

    for kind, spe in ((keras.Sequential, 1), (keras.Sequential, 2), (OwnMaker, 1)):
        if spe > 1 and keras.backend.backend() == "torch":
            continue  # PyTorch's trainer allows steps_per_execution=1 only
        model = kind([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile("sgd", "mse", steps_per_execution=spe)
        model.make_train_function()
        assert internals.made_by_make_train_function(model.train_function), (kind, spe)
    keras_function = model.train_function
    users = lambda *args: keras_function(*args)  # noqa: E731
    assert not internals.made_by_make_train_function(users)
    assert not internals.made_by_make_train_function(functools.wraps(keras_function)(lambda *a: keras_function(*a)))
    assert not internals.made_by_make_train_function(print)  # no code object


def test_the_logs_a_train_function_returns_are_those_fit_passes_to_its_callbacks():
    """The logs in the train function's return value are what ``on_train_batch_end`` gets;
    other values hold none. (This file runs on TensorFlow; JAX's trainer, which returns the
    logs with the state, and PyTorch's: ``test_batch_metrics_are_the_logs_fit_passes_...`` in
    tests/test_backend_jax_taps.py and tests/test_backend_torch_taps.py.)"""
    import keras
    import numpy as np

    returned, passed = [], []

    class Watch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model.make_train_function()
            inner = self.model.train_function

            def train_function(*args, **kwargs):
                result = inner(*args, **kwargs)
                returned.append(internals.train_function_logs(result))
                return result

            self.model.train_function = train_function

        def on_train_batch_end(self, batch, logs=None):
            passed.append(dict(logs))

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse", metrics=["mae"])
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    model.fit(x, x[:, :2], batch_size=4, verbose=0, callbacks=[Watch()])
    assert len(returned) == len(passed) == 2
    for logs, seen in zip(returned, passed):
        assert sorted(logs) == sorted(seen) == ["loss", "mae"]
        assert all(float(keras.ops.convert_to_numpy(logs[k])) == seen[k] for k in seen)
    assert internals.train_function_logs(None) is None
    assert internals.train_function_logs((1, 2)) is None
