"""Smoke tests of the sanity_checks, lr_finder and hparam_search recipes in --quick mode: each
runs the quick mode once, checks its qualitative outcome (in the test's docstring) and the
doctor's findings on the runs the recipe declares healthy or faulty (issue 19)."""

from pathlib import Path

import pytest

from tests._recipe_doctor import check_declared_runs


def quick(tmp_path, *extra):
    return ["--quick", "--dataset", "fashion_mnist_small", "--log-dir", str(tmp_path), *extra]


def test_sanity_checks_recipe_catches_each_broken_setup(tmp_path):
    """Quick mode still shows: the good setup passes all four checks, each broken one fails the
    check that must catch it (the only one quick mode runs on it); the doctor finds the initial
    loss, the zero gradient and the divergence in the broken setups' runs, no error in the good one."""
    from keras_bn.recipes import sanity_checks

    out = sanity_checks.main(quick(tmp_path))
    assert out["caught"] == {"good": True, "huge_last_layer": True, "zero_init": True, "lr_10": True}
    assert out["reports"]["good"].passed and set(out["reports"]["good"].results) == set(sanity_checks.CHECKS)
    assert set(out["reports"]["zero_init"].results) == {"overfit"}
    assert out["reports"]["huge_last_layer"].results["initial_loss"].loss > 10
    assert all(f.held for f in out["findings"]), out["findings"]
    assert (Path(out["log_dir"]) / "sanity_checks.png").is_file()
    check_declared_runs(sanity_checks, out)


def test_lr_finder_recipe_bn_tolerates_higher_lr(tmp_path):
    """Quick mode still shows: BN's suggested learning rate is higher, and the BN net trains at it."""
    from keras_bn.recipes import lr_finder

    out = lr_finder.main(quick(tmp_path))
    assert set(out["suggestion"]) == {"no_bn", "with_bn"}
    assert out["bn_ratio"] > 1.0
    assert out["check"]["loss"][-1] < out["check"]["loss"][0]
    held = {f.claim: f.held for f in out["findings"]}
    assert held == {"BN tolerates a higher learning rate (higher suggestion)": True,
                    "the BN net's training loss falls at its suggested rate": True}
    assert (Path(out["log_dir"]) / "lr_finder.png").is_file()
    assert any((Path(out["log_dir"]) / "with_bn").iterdir())
    check_declared_runs(lr_finder, out)


def test_hparam_search_recipe_random_tries_more_learning_rates(tmp_path):
    """Quick mode still shows: on the same budget of 2, random search tries 2 learning rates and
    the grid fewer; coarse-to-fine runs both stages; the retrained best trial gets no error."""
    from keras_bn.recipes import hparam_search

    out = hparam_search.main(quick(tmp_path))
    assert out["trials"] == 2
    grid, random = out["results"]["grid"], out["results"]["random"]
    assert grid.distinct_values("learning_rate") < random.distinct_values("learning_rate") == 2
    c2f = out["coarse_to_fine"]
    assert {t.stage for t in c2f.trials} == {"coarse", "fine"}
    for name in ("grid", "random", "coarse_to_fine"):
        assert (Path(out["log_dir"]) / f"{name}_trials.csv").is_file()
        assert any((Path(out["log_dir"]) / name).iterdir())
    check_declared_runs(hparam_search, out)


def test_sanity_checks_figure_labels_do_not_overlap(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from types import SimpleNamespace

    import matplotlib.pyplot as plt

    from keras_bn.recipes import sanity_checks

    figures = []
    monkeypatch.setattr(sanity_checks._common, "save_figure", lambda fig, path: figures.append(fig))
    results = {c: SimpleNamespace(passed=True) for c in sanity_checks.CHECKS}
    sanity_checks._plot({s: SimpleNamespace(results=results) for s in sanity_checks.EXPECTED_CATCH}, tmp_path / "f.png")
    fig = figures[0]
    fig.canvas.draw()
    boxes = [label.get_window_extent() for label in fig.axes[0].get_xticklabels()]
    assert len(boxes) == len(sanity_checks.CHECKS)
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]
    plt.close(fig)
