"""The check each recipe's quick-mode test makes of the runs the recipe declares (issue 19).

A recipe declares ``HEALTHY`` (a tuple of run names: no ``error`` finding allowed) and
``FAULTS`` (run name -> the doctor rules it demonstrates: at least one must fire). Run names
are the run folders inside the invocation folder, ``results["log_dir"]``.

Usage::

    results = bn_vs_no_bn.main(["--quick", "--dataset", "fashion_mnist_small", "--log-dir", str(tmp_path)])
    check_declared_runs(bn_vs_no_bn, results)
"""

from __future__ import annotations

from pathlib import Path

from keras_bn import doctor


def check_declared_runs(recipe, results: dict) -> dict:
    """Assert the declared healthy and fault runs of `recipe` against the doctor's findings of
    the invocation in `results`; returns {run: findings} for further checks."""
    healthy, faults = tuple(recipe.HEALTHY), dict(recipe.FAULTS)
    assert healthy or faults, f"{recipe.NAME} declares no healthy and no fault run"
    assert not set(healthy) & set(faults), f"{recipe.NAME}: a run is declared healthy and faulty"
    root = Path(results["log_dir"])
    found = {}
    for name in healthy + tuple(faults):
        assert (root / name).is_dir(), f"{recipe.NAME}: declared run {name!r} wrote no folder in {root}"
        found[name] = doctor.diagnose(root / name)
    for name in healthy:
        errors = [str(f) for f in found[name] if f.severity == "error"]
        assert not errors, f"{recipe.NAME}: healthy run {name!r} got error findings: {errors}"
    for name, rules in faults.items():
        fired = {f.rule for f in found[name]}
        assert fired & set(rules), (f"{recipe.NAME}: fault run {name!r} should get one of {sorted(rules)}; "
                                    f"the doctor found {sorted(fired) or 'nothing'}")
    return found
