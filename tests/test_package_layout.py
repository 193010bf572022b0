"""The package's layout rules: every public module of keras_bn declares `__all__`, every name in
it exists, and no keras_bn file is much over 400 lines.

(tests/test_layout.py tests the dashboard layout, keras_bn/callbacks/_layout.py.)"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "keras_bn"
MAX_LINES = 410  # "about 400"


def _public_modules() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return names


def test_the_public_modules_are_found():
    modules = _public_modules()
    assert {"keras_bn", "keras_bn.callbacks", "keras_bn.initializers", "keras_bn.optimizers",
            "keras_bn.callbacks.preset", "keras_bn.events"} <= set(modules)
    assert not any("._" in name for name in modules)


@pytest.mark.parametrize("module_name", _public_modules())
def test_every_public_module_declares_all_and_its_names_exist(module_name):
    path = ROOT.parent.joinpath(*module_name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    declared = [node for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                and any(getattr(t, "id", None) == "__all__" for t in
                        (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    assert declared, f"{module_name} has no __all__"
    module = importlib.import_module(module_name)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what it does not define: {missing}"
    assert len(set(module.__all__)) == len(module.__all__), f"{module_name}.__all__ repeats a name"


def test_no_keras_bn_file_is_much_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
