"""Sanity checks (SEEDS §7) on a good setup and on three broken ones, each caught by a check.

The 784-32-32-10 MLP (BN, He init, Adam 1e-3) should pass all four checks of
`keras_bn.sanity`: initial loss ~ ln(10), overfit 20 examples, L2 raises the loss, and a
short run whose loss falls without tripping the 3x LossGuard. Then:

- ``huge_last_layer``: the logits kernel x100 (bad init): the initial loss is far above ln(10);
- ``zero_init``: every hidden kernel zero (no symmetry breaking): it cannot overfit 20 examples;
- ``lr_10``: Adam with learning rate 10: the LossGuard stops the short run (and it cannot
  overfit either).

``--quick`` runs on each broken setup only the check that must catch it. Each setup then
trains 20 steps with the diagnostics on, in a run of its name, which the doctor reads
(`HEALTHY`, `FAULTS`): one compiled model restarted from each setup's initial weights.

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
# Each setup also trains briefly with the diagnostics on, in a run of its name, for the doctor (issue 19).
HEALTHY = ("good",)
FAULTS = {"huge_last_layer": ("initial_loss",),  # SEEDS §7: the softmax starts far above ln(10)
          "zero_init": ("no_gradient",),  # SEEDS §4: zero kernels break no symmetry
          "lr_10": ("diverging", "nonfinite_loss")}
LEARNING_RATES = {"lr_10": 10.0}  # the rest: Adam's 1e-3
DOCTOR_STEPS = 20


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


def only_check(check: str, model_fn, x, y, *, overfit_steps: int, short_samples: int):
    """A `SanityReport` of the one check `check` (quick mode runs only the check that must
    catch a broken setup; the good setup runs all four)."""
    from keras_bn import sanity

    if check == "initial_loss":
        result = sanity.check_initial_loss(model_fn(), x[:1000], y[:1000])
    elif check == "overfit":
        result = sanity.check_overfit(model_fn, x, y, max_steps=overfit_steps)
    elif check == "short_run":
        result = sanity.check_short_run(model_fn, x[:short_samples], y[:short_samples])
    else:
        result = sanity.check_regularization_raises_loss(model_fn, x, y)
    report = sanity.SanityReport({check: result})
    print(report.table())
    return report


def doctor_runs(args, data, fns: dict) -> None:
    """A short fit of each setup with the diagnostics on, in a run of its name: one compiled
    model restarted from each setup's initial weights (`_common.restart`: one trace for all)."""
    from keras_bn.optimizers import adam

    model = None
    for setup, model_fn in fns.items():
        start = model_fn()
        if model is None:
            model = fns["good"]()
            model.compile(optimizer=adam(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            base_rate = float(model.optimizer.learning_rate.numpy())
        _common.restart(model, _common.initial_state(start), learning_rate=LEARNING_RATES.get(setup, base_rate))
        _common.train_for_steps(model, data, steps=DOCTOR_STEPS, batch_size=64, eval_every=DOCTOR_STEPS // 2,
                                seed=args.seed, label=f"diagnostics run {setup}",
                                callbacks=_common.training_callbacks(_common.run_dir(args, NAME, setup),
                                                                     probe=_common.full_mode_probe(args, data),
                                                                     every=5))


def run(args: argparse.Namespace) -> dict:
    from keras_bn.sanity import sanity_check

    data = _common.load_data(args, flatten=True)
    short_samples = 640 if args.quick else 2000
    overfit_steps = args.overfit_steps or (60 if args.quick else 200)
    fns = model_fns(data.x_train.shape[1], args.units, data.num_classes)
    reports = {}
    for setup, model_fn in fns.items():
        print(f"\n## {setup}")
        if args.quick and EXPECTED_CATCH[setup] is not None:
            reports[setup] = only_check(EXPECTED_CATCH[setup], model_fn, data.x_train, data.y_train,
                                        overfit_steps=overfit_steps, short_samples=short_samples)
        else:
            reports[setup] = sanity_check(model_fn, (data.x_train, data.y_train), overfit_steps=overfit_steps,
                                          short_run_samples=short_samples)
    rows, caught = [], {}
    for setup, report in reports.items():
        failed = [c for c in CHECKS if c in report.results and not report.results[c].passed]
        expected = EXPECTED_CATCH[setup]
        caught[setup] = (not failed) if expected is None else (expected in failed)
        rows.append([setup] + [_status(report, c) for c in CHECKS]
                    + [expected or "(passes all)", "yes" if caught[setup] else "NO"])
    print()
    print(_common.format_table(["setup", *CHECKS, "should be caught by", "as expected"], rows))

    def measured(report, check, field):
        value = getattr(report.results[check], field) if check in report.results else None
        return "-" if value is None else value

    print(_common.format_table(["setup", "initial loss", "overfit steps", "overfit acc", "short-run final loss"],
                               [[s, measured(r, "initial_loss", "loss"), measured(r, "overfit", "steps"),
                                 measured(r, "overfit", "accuracy"), measured(r, "short_run", "final_loss")]
                                for s, r in reports.items()]))
    _plot(reports, _common.recipe_dir(args, NAME) / f"{NAME}.png")
    print("\nshort diagnostics runs for the doctor (keras-bn report on each):")
    doctor_runs(args, data, fns)
    findings = explain(reports)
    _findings.report(findings)
    return {"dataset": data.name, "reports": reports, "caught": caught, "findings": findings}


def _status(report, check: str) -> str:
    if check not in report.results:
        return "-"  # not run (quick mode)
    passed = report.results[check].passed
    return "n/a" if passed is None else "pass" if passed else "FAIL"


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
    # NaN: not run (quick mode) or not applicable, drawn grey
    grid = np.array([[np.nan if c not in r.results or r.results[c].passed is None else r.results[c].passed
                      for c in CHECKS] for r in reports.values()], dtype=float)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="0.85")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")  # cells fill the width
    ax.set_xticks(range(len(CHECKS)), [c.replace("_", " ") for c in CHECKS])
    ax.set_yticks(range(len(reports)), list(reports))
    for i, report in enumerate(reports.values()):
        for j, check in enumerate(CHECKS):
            label = "not run" if check not in report.results else _status(report, check)
            ax.text(j, i, label, ha="center", va="center")
    ax.set_title("sanity checks: good vs broken setups")
    _common.save_figure(fig, path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
