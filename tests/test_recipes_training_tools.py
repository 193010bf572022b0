"""Smoke tests of the sanity_checks, lr_finder and hparam_search recipes in --quick mode."""

from pathlib import Path

import pytest


def quick(tmp_path, *extra):
    return ["--quick", "--dataset", "fashion_mnist_small", "--log-dir", str(tmp_path), *extra]


def test_sanity_checks_recipe_catches_each_broken_setup(tmp_path):
    from keras_bn.recipes import sanity_checks

    out = sanity_checks.main(quick(tmp_path))
    assert out["caught"] == {"good": True, "huge_last_layer": True, "zero_init": True, "lr_10": True}
    assert out["reports"]["good"].passed
    assert out["reports"]["huge_last_layer"].results["initial_loss"].loss > 10
    assert (Path(out["log_dir"]) / "sanity_checks.png").is_file()


def test_lr_finder_recipe_bn_tolerates_higher_lr(tmp_path):
    from keras_bn.recipes import lr_finder

    out = lr_finder.main(quick(tmp_path))
    assert set(out["suggestion"]) == {"no_bn", "with_bn"}
    assert out["bn_ratio"] > 1.0
    assert (Path(out["log_dir"]) / "lr_finder.png").is_file()
    assert any((Path(out["log_dir"]) / "with_bn").iterdir())


def test_hparam_search_recipe_random_tries_more_learning_rates(tmp_path):
    from keras_bn.recipes import hparam_search

    out = hparam_search.main(quick(tmp_path, "--trials", "2", "--train-samples", "600"))
    grid, random = out["results"]["grid"], out["results"]["random"]
    assert grid.distinct_values("learning_rate") < random.distinct_values("learning_rate") == 2
    c2f = out["coarse_to_fine"]
    assert {t.stage for t in c2f.trials} == {"coarse", "fine"}
    for name in ("grid", "random", "coarse_to_fine"):
        assert (Path(out["log_dir"]) / f"{name}_trials.csv").is_file()
        assert any((Path(out["log_dir"]) / name).iterdir())


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
