"""The learning-rate range test on the 784-32-32-10 MLP with and without BatchNorm.

`keras_bn.lr_find.lr_find` ramps Adam's learning rate from 1e-7 to 10 over `--steps`
mini-batches for each network (same seed, same batches), and reads a learning rate off each
smoothed curve. BN networks tolerate higher learning rates (SEEDS §5): the BN curve should
keep falling to a higher learning rate, and its suggestion should be higher. Repeated over
`--repeats` seeds; the table gives the median and the range.

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
    findings = explain(suggestion, steps, repeats)
    _findings.report(findings)
    return {"dataset": data.name, "steps": steps, "repeats": repeats, "results": results,
            "suggestion": suggestion, "bn_ratio": ratio, "findings": findings}


def explain(suggestion: dict, steps: int, repeats: int) -> list:
    """The claim on this run's range tests: BN's suggested learning rate (smoothed minimum / 10,
    median over the seeds) is higher than the plain net's."""
    ratio = suggestion["with_bn"] / suggestion["no_bn"]
    return [_findings.Finding(
        "BN tolerates a higher learning rate (higher suggestion)", ratio > 1,
        f"{ratio:.2f}x: {suggestion['with_bn']:.3g} with BN vs {suggestion['no_bn']:.3g} without",
        f"a ramp of {steps} steps over {repeats} seed(s) puts the two loss minima within one grid step")]


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
