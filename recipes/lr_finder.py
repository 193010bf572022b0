"""The learning-rate range test on the 784-32-32-10 MLP with and without BatchNorm.

`keras_bn.lr_find.lr_find` ramps Adam's learning rate from 1e-7 to 10 over `--steps`
mini-batches for each network (same seed, same batches), and reads a learning rate off each
smoothed curve. BN networks tolerate higher learning rates (SEEDS §5): the BN curve should
keep falling to a higher learning rate, and its suggestion should be higher. Repeated over
`--repeats` seeds; the table gives the median and the range. The BN net then trains one pass
at its own suggestion with the diagnostics on (run ``with_bn_at_suggestion``): its loss should fall.

Usage::

    keras-bn run lr_finder --quick
    python -m keras_bn.recipes.lr_finder --data-dir ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse

import numpy as np

from keras_bn import _arg_types as types
from keras_bn.recipes import _common, _findings

NAME = "lr_finder"
DESCRIPTION = "The learning-rate range test on the MLP with and without BatchNorm, both curves in one plot."
RUNS = {"no_bn": None, "with_bn": "batch"}
# The range tests log only their curve; the BN net then trains briefly at its own suggestion with
# the diagnostics on, in this run, for the doctor (issue 19).
CHECK_RUN = "with_bn_at_suggestion"
HEALTHY = (CHECK_RUN,)
FAULTS: dict = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=types.positive_int, default=None, help="mini-batches of the ramp (default 100; 50 with --quick)")
    parser.add_argument("--repeats", type=types.positive_int, default=None, help="seeds per network (default 3; 1 with --quick)")
    parser.add_argument("--batch-size", type=types.positive_int, default=64, help="batch size (default 64)")
    parser.add_argument("--units", type=types.positive_int, nargs="+", default=[32, 32], help="hidden widths (default 32 32)")


def run(args: argparse.Namespace) -> dict:
    import keras_bn
    from keras_bn.lr_find import lr_find, plot

    data = _common.load_data(args, flatten=True)
    steps = args.steps or (50 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 3)
    input_dim = data.x_train.shape[1]
    results = {run: [] for run in RUNS}
    for run, norm in RUNS.items():
        for r in range(repeats):
            _common.set_seed(args.seed + r)
            log_dir = _common.run_dir(args, NAME, run if repeats == 1 else f"{run}_seed{args.seed + r}")
            results[run].append(lr_find(
                lambda norm=norm: keras_bn.build_dense((input_dim,), args.units, data.num_classes, norm=norm),
                (data.x_train, data.y_train), steps=steps, batch_size=args.batch_size, seed=args.seed + r,
                log_dir=log_dir))
    rows, summary = [], {}
    for run, found in results.items():
        for rule in found[0].suggestions:
            values = [f.suggestions[rule] for f in found]
            summary[(run, rule)] = float(np.median(values))
            rows.append([run, rule, float(np.median(values)), f"{min(values):.3g} .. {max(values):.3g}"])
        lowest = [float(f.lrs[int(np.nanargmin(f.smoothed))]) for f in found]
        rows.append([run, "lr at smoothed minimum", float(np.median(lowest)), f"{min(lowest):.3g} .. {max(lowest):.3g}"])
    print(_common.format_table(["model", "rule", f"median of {repeats}", "range"], rows))
    ratio = summary[("with_bn", "minimum_div_10")] / summary[("no_bn", "minimum_div_10")]
    print(f"BN / no-BN suggestion (minimum_div_10): {ratio:.1f}x")
    plot({run: found[0] for run, found in results.items()}, _common.recipe_dir(args, NAME) / f"{NAME}.png",
         title=f"LR range test, MLP {'-'.join(map(str, args.units))} ({data.name})")
    suggestion = {run: summary[(run, "minimum_div_10")] for run in RUNS}
    check = train_at(args, data, suggestion["with_bn"])
    findings = explain(suggestion, steps, repeats, check)
    _findings.report(findings)
    return {"dataset": data.name, "steps": steps, "repeats": repeats, "results": results,
            "suggestion": suggestion, "bn_ratio": ratio, "check": check, "findings": findings}


def train_at(args: argparse.Namespace, data, learning_rate: float) -> dict:
    """A fresh BN net trained one pass over the data (two evaluations) at `learning_rate`,
    with the diagnostics on, in run `CHECK_RUN`; `train_for_steps`' history."""
    import keras

    import keras_bn
    from keras_bn.optimizers import adam

    _common.set_seed(args.seed)
    model = keras_bn.build_dense((data.x_train.shape[1],), args.units, data.num_classes, norm="batch")
    model.compile(optimizer=adam(learning_rate=learning_rate), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    half = max(1, len(data.x_train) // args.batch_size // 2)
    return _common.train_for_steps(model, data, steps=2 * half, batch_size=args.batch_size, eval_every=half,
                                   seed=args.seed, label=f"{CHECK_RUN} (lr {learning_rate:.3g})",
                                   callbacks=_common.training_callbacks(_common.run_dir(args, NAME, CHECK_RUN),
                                                                        probe=_common.full_mode_probe(args, data),
                                                                        fit_steps=half))


def explain(suggestion: dict, steps: int, repeats: int, check: dict | None = None) -> list:
    """The claims on this run's range tests: BN's suggested learning rate (smoothed minimum / 10,
    median over the seeds) is higher than the plain net's; and, given `check` (`train_at`'s
    history), the BN net's loss falls at that rate."""
    ratio = suggestion["with_bn"] / suggestion["no_bn"]
    findings = [_findings.Finding(
        "BN tolerates a higher learning rate (higher suggestion)", ratio > 1,
        f"{ratio:.2f}x: {suggestion['with_bn']:.3g} with BN vs {suggestion['no_bn']:.3g} without",
        f"a ramp of {steps} steps over {repeats} seed(s) puts the two loss minima within one grid step")]
    if check is not None:
        findings.append(_findings.compare(
            "the BN net's training loss falls at its suggested rate", check["loss"][-1], check["loss"][0],
            higher_is_better=False, words=("lower", "higher"),
            reason=f"the suggestion {suggestion['with_bn']:.3g} is too high for this net "
                   f"(test accuracy {check['test_accuracy'][-1]:.3f} after {check['step'][-1]} steps)"))
    return findings


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
