"""Sanity checks (SEEDS §7) on a good setup and on three broken ones, each caught by a check.

The 784-32-32-10 MLP (BN, He init, Adam 1e-3) should pass all four checks of
`keras_bn.sanity`: initial loss ~ ln(10), overfit 20 examples, L2 raises the loss, and a
short run whose loss falls without tripping the 3x LossGuard. Then:

- ``huge_last_layer``: the logits kernel x100 (bad init): the initial loss is far above ln(10);
- ``zero_init``: every hidden kernel zero (no symmetry breaking): it cannot overfit 20 examples;
- ``lr_10``: Adam with learning rate 10: the LossGuard stops the short run (and it cannot
  overfit either).

Usage::

    keras-bn run sanity_checks --quick
    python -m keras_bn.recipes.sanity_checks --data-dir ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse

from keras_bn import _arg_types as types
from keras_bn.recipes import _common, _findings

NAME = "sanity_checks"
DESCRIPTION = "The babysitting sanity checks on a good MLP and on bad-init, zero-init and LR-10 versions."
CHECKS = ("initial_loss", "overfit", "regularization", "short_run")
# setup -> the check that must catch it (None: the good setup, which must pass them all)
EXPECTED_CATCH = {"good": None, "huge_last_layer": "initial_loss", "zero_init": "overfit", "lr_10": "short_run"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--units", type=types.positive_int, nargs="+", default=[32, 32], help="hidden widths (default 32 32)")
    parser.add_argument("--overfit-steps", type=types.positive_int, default=None,
                        help="step budget of the overfit check (default 200; 60 with --quick)")


def model_fns(input_dim: int, units: list[int], num_classes: int) -> dict:
    """``setup name -> model_fn`` for the good and the broken setups."""
    import keras_bn
    from keras_bn.optimizers import adam

    def good():
        return keras_bn.build_dense((input_dim,), units, num_classes)

    def huge_last_layer():
        model = good()
        kernel = model.get_layer("logits").kernel
        kernel.assign(kernel * 100.0)
        return model

    def zero_init():
        return keras_bn.build_dense((input_dim,), units, num_classes, initializer="zeros")

    def lr_10():
        model = good()
        model.compile(optimizer=adam(learning_rate=10.0), loss="sparse_categorical_crossentropy")
        return model

    return {"good": good, "huge_last_layer": huge_last_layer, "zero_init": zero_init, "lr_10": lr_10}


def run(args: argparse.Namespace) -> dict:
    from keras_bn.sanity import sanity_check

    data = _common.load_data(args, flatten=True)
    short_samples = 640 if args.quick else 2000
    reports = {}
    for setup, model_fn in model_fns(data.x_train.shape[1], args.units, data.num_classes).items():
        print(f"\n## {setup}")
        reports[setup] = sanity_check(model_fn, (data.x_train, data.y_train), overfit_steps=args.overfit_steps or (60 if args.quick else 200),
                                      short_run_samples=short_samples)
    rows, caught = [], {}
    for setup, report in reports.items():
        failed = [c for c in CHECKS if not report.results[c].passed]
        expected = EXPECTED_CATCH[setup]
        caught[setup] = (not failed) if expected is None else (expected in failed)
        rows.append([setup] + ["pass" if report.results[c].passed else "FAIL" for c in CHECKS]
                    + [expected or "(passes all)", "yes" if caught[setup] else "NO"])
    print()
    print(_common.format_table(["setup", *CHECKS, "should be caught by", "as expected"], rows))
    measured = [[s, r.results["initial_loss"].loss, r.results["overfit"].steps or "-", r.results["overfit"].accuracy,
                 r.results["short_run"].final_loss] for s, r in reports.items()]
    print(_common.format_table(["setup", "initial loss", "overfit steps", "overfit acc", "short-run final loss"], measured))
    _plot(reports, _common.recipe_dir(args, NAME) / f"{NAME}.png")
    findings = explain(reports)
    _findings.report(findings)
    return {"dataset": data.name, "reports": reports, "caught": caught, "findings": findings}


def explain(reports: dict) -> list:
    """One claim per setup, on this run's measurements: the good setup passes every check,
    each broken one fails the check that should catch it; the measured value says by how much."""
    findings = []
    for setup, report in reports.items():
        expected = EXPECTED_CATCH[setup]
        if expected is None:
            failed = [c for c in CHECKS if not report.results[c].passed]
            detail = "; ".join(f"{c}: {report.results[c].row()[2]}" for c in failed) or "all four passed"
            findings.append(_findings.Finding(f"{setup} passes every check", not failed, detail,
                                              f"failed: {', '.join(failed)}"))
        else:
            name, passed, measured, wanted = report.results[expected].row()
            findings.append(_findings.Finding(f"{setup} is caught by {expected}", not passed,
                                              f"measured {measured}, healthy: {wanted}",
                                              f"this run's {setup} still met {expected}'s bar"))
    return findings


def _plot(reports: dict, path):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    grid = np.array([[r.results[c].passed for c in CHECKS] for r in reports.values()], dtype=float)
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")  # cells fill the width: labels do not overlap
    ax.set_xticks(range(len(CHECKS)), [c.replace("_", " ") for c in CHECKS])
    ax.set_yticks(range(len(reports)), list(reports))
    for (i, j), ok in np.ndenumerate(grid):
        ax.text(j, i, "pass" if ok else "FAIL", ha="center", va="center")
    ax.set_title("sanity checks: good vs broken setups")
    _common.save_figure(fig, path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
