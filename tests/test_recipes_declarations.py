"""Every recipe declares its healthy and fault runs (issue 19), and a quick-mode test checks them.

The declarations are read from the recipe modules; the check itself (`tests/_recipe_doctor.py`)
runs in each recipe's own quick-mode test. This file makes sure none is left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keras_bn import doctor
from keras_bn.recipes import RECIPES, get_recipe

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_declares_healthy_and_fault_runs_with_known_rules(name):
    recipe = get_recipe(name)
    healthy, faults = recipe.HEALTHY, recipe.FAULTS
    assert isinstance(healthy, tuple) and all(isinstance(run, str) for run in healthy), healthy
    assert isinstance(faults, dict) and all(isinstance(run, str) for run in faults), faults
    assert healthy or faults, f"{name} declares no run"
    assert not set(healthy) & set(faults), f"{name}: a run is both healthy and a fault"
    unknown = {rule for rules in faults.values() for rule in rules} - set(doctor.RULES)
    assert not unknown, f"{name}: FAULTS names rules the doctor does not have: {sorted(unknown)}"
    assert all(rules for rules in faults.values()), f"{name}: a fault run names no rule"


def test_every_recipe_has_a_quick_mode_test_that_checks_its_declared_runs():
    checked = set()
    for path in TESTS.glob("test_recipes_*.py"):
        text = path.read_text()
        for module in re.findall(r"check_declared_runs\((\w+)", text):
            checked.add(module)
    assert set(RECIPES) <= checked, f"no check_declared_runs call for: {sorted(set(RECIPES) - checked)}"
