"""Batch size and normalization (SEEDS §5-§6): BN suffers at tiny batches, LN and GN do not.

The small CNN (``--filters``, ReLU, 2x2 max pooling, global average pooling) with BatchNorm,
LayerNorm, GroupNorm (``--groups`` groups) and no norm, trained with Adam at batch sizes 2,
4, 8, 32 and 128 for the same number of examples seen (``--examples``, so batch 2 takes 64x
the steps of batch 128). Measured: test accuracy (inference mode), and for BN the gap
between its two modes on test batches of the training batch size: the accuracy with batch
statistics (``training=True``) vs moving averages (``training=False``) and the share of
test images whose predicted class differs.

Usage::

    keras-bn run batch_size_norms --quick
    python -m keras_bn.recipes.batch_size_norms --batch-sizes 2 32 --examples 20000
"""

from __future__ import annotations

import argparse

import numpy as np

from keras_bn import _arg_types as types
from keras_bn.recipes import _common, _findings

NAME = "batch_size_norms"
DESCRIPTION = "Small CNN with BN, LayerNorm, GroupNorm and none at batch sizes 2-128, same examples seen: accuracy and BN's train/inference gap."
NORMS = {"batch": "batch", "layer": "layer", "group": "group", "none": None}
BATCH_SIZES = (2, 4, 8, 32, 128)
QUICK_BATCH_SIZES = (2, 32)
QUICK_NORMS = ("batch", "layer")
# Quick mode runs only what its claims compare: BN at both sizes, LayerNorm at the small one.
QUICK_RUNS = (("batch", 2), ("batch", 32), ("layer", 2))
# The runs the doctor checks (issue 19), named as in quick mode and in the full grid.
HEALTHY = ("batch_batch32", "layer_batch2")
FAULTS = {"batch_batch2": ("bn_small_batch",)}  # Wu & He 2018: BN degrades below 16 per replica
GAP_SAMPLES = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-sizes", type=types.positive_int, nargs="+", default=None,
                        help="batch sizes (default 2 4 8 32 128; quick 2 32)")
    parser.add_argument("--norms", nargs="+", default=None, choices=list(NORMS),
                        help="normalizations (default batch layer group none; quick: BN at both batch sizes, layer at the smaller)")
    parser.add_argument("--examples", type=types.positive_int, default=None,
                        help="training examples seen per run (default 20000; quick 256)")
    parser.add_argument("--filters", type=types.positive_int, nargs="+", default=[16, 32], help="CNN filters (default 16 32)")
    parser.add_argument("--groups", type=types.positive_int, default=4, help="GroupNorm groups (default 4)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")


def _train_mode_call(model):
    """``model(x, training=True)``; on TensorFlow one traced function for every batch (the
    128 calls at batch 2 cost 10x more eagerly than the trace)."""
    import functools

    import keras

    call = functools.partial(model.__call__, training=True)
    if keras.backend.backend() != "tensorflow":
        return call
    import tensorflow as tf

    return tf.function(call)  # a partial: TensorFlow's retracing warning counts code objects


def bn_mode_gap(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict:
    """Accuracy with batch statistics vs moving averages on batches of `batch_size`, and the
    share of predictions that differ; BN's moving statistics are left unchanged."""
    import keras

    usable = len(x) // batch_size * batch_size
    x, y = x[:usable], y[:usable]
    infer = np.concatenate([  # direct calls: a predict function would be traced for two calls
        np.argmax(keras.ops.convert_to_numpy(model(x[i:i + 500], training=False)), axis=-1)
        for i in range(0, usable, 500)])
    call = _train_mode_call(model)
    with _common.kept_state(model):
        train = np.concatenate([np.argmax(keras.ops.convert_to_numpy(call(x[i:i + batch_size])), axis=-1)
                                for i in range(0, usable, batch_size)])
    return {"train_mode_accuracy": float(np.mean(train == y)), "inference_accuracy": float(np.mean(infer == y)),
            "disagreement": float(np.mean(train != infer))}


def run(args: argparse.Namespace) -> dict:
    import keras

    import keras_bn

    data = _common.load_data(args, flatten=False)
    examples = args.examples or (256 if args.quick else 20000)
    gap_samples = 256 if args.quick else GAP_SAMPLES  # batch 2 scores them in 128 eager calls
    args.batch_sizes = args.batch_sizes or list(QUICK_BATCH_SIZES if args.quick else BATCH_SIZES)
    args.norms = args.norms or list(QUICK_NORMS if args.quick else NORMS)
    print(f"small CNN {args.filters}, Adam lr {args.learning_rate}, {examples} examples per run, "
          f"batch sizes {args.batch_sizes}, norms {args.norms}")
    quick_grid = args.quick and args.batch_sizes == list(QUICK_BATCH_SIZES) and args.norms == list(QUICK_NORMS)
    results, compiled = {}, {}  # compiled: norm -> the model every batch size of it trains on (one trace)
    for norm in args.norms:
        norm_kwargs = {"groups": args.groups} if norm == "group" else None
        for batch_size in args.batch_sizes:
            if quick_grid and (norm, batch_size) not in QUICK_RUNS:
                continue
            _common.set_seed(args.seed)  # same initial weights for every batch size
            model = keras_bn.build_conv(data.x_train.shape[1:], args.filters, data.num_classes,
                                        norm=NORMS[norm], norm_kwargs=norm_kwargs, name=f"cnn_{norm}")
            model = _common.compiled_like(compiled, norm, model, lambda m: m.compile(
                optimizer=keras.optimizers.Adam(args.learning_rate),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"]))
            run_name = f"{norm}_batch{batch_size}"
            steps = max(1, examples // batch_size)
            callbacks = _common.training_callbacks(_common.run_dir(args, NAME, run_name),
                                                   probe=_common.full_mode_probe(args, data), fit_steps=steps)
            history = _common.train_for_steps(model, data, steps=steps, batch_size=batch_size, eval_every=steps,
                                              seed=args.seed, callbacks=callbacks, label=run_name,
                                              any_batch_size=True)
            result = {"test_accuracy": history["test_accuracy"][-1], "steps": steps, "seconds": history["seconds"]}
            if norm == "batch":
                result.update(bn_mode_gap(model, data.x_test[:gap_samples], data.y_test[:gap_samples], batch_size))
                result["lag"] = _findings.bn_lag(model, data.x_test[:256], data.y_test[:256], steps)
            results[(norm, batch_size)] = result

    columns = ["norm"] + [f"batch {b}" for b in args.batch_sizes]
    rows = [[norm] + [results[(norm, b)]["test_accuracy"] if (norm, b) in results else "-" for b in args.batch_sizes]
            for norm in args.norms]
    print("test accuracy (inference mode)")
    print(_common.format_table(columns, rows))
    if "batch" in args.norms:
        gap_rows = [[b, results[("batch", b)]["train_mode_accuracy"], results[("batch", b)]["inference_accuracy"],
                     results[("batch", b)]["disagreement"]] for b in args.batch_sizes]
        print("BN: batch statistics vs moving averages on test batches of the training batch size")
        print(_common.format_table(["batch size", "acc, batch stats", "acc, moving averages",
                                    "predictions differing"], gap_rows))
    _plot(results, args, _common.recipe_dir(args, NAME) / f"{NAME}.png", data.name, examples)
    runs = {f"{norm}_batch{b}": r for (norm, b), r in results.items()}
    findings = explain(runs, args.norms, args.batch_sizes)
    _findings.report(findings)
    return {"examples": examples, "dataset": data.name, "runs": runs, "findings": findings}


def explain(runs: dict, norms, batch_sizes) -> list:
    """This recipe's claims on its own numbers: BN's two modes disagree more at the smallest
    batch than at the largest; a batch-independent norm beats BN at the smallest batch; BN
    beats no norm at the largest. Where a claim fails, the reason is BN's measured lag."""
    small, large = min(batch_sizes), max(batch_sizes)
    findings = []
    if "batch" not in norms:
        return findings
    bn_small, bn_large = runs[f"batch_batch{small}"], runs[f"batch_batch{large}"]
    if small != large:
        findings.append(_findings.compare(
            f"BN's batch-statistics and moving-average predictions differ more at batch {small} than at {large}",
            bn_small["disagreement"], bn_large["disagreement"], scale=100, unit=" points", words=("more", "less"),
            reason=f"at batch {large}: {_findings.lag_reason(bn_large['lag'])}"))
    others = [n for n in ("layer", "group") if n in norms]
    if others:
        best = max(others, key=lambda n: runs[f"{n}_batch{small}"]["test_accuracy"])
        findings.append(_findings.compare(
            f"{best} norm beats BN at batch {small}", runs[f"{best}_batch{small}"]["test_accuracy"],
            bn_small["test_accuracy"], scale=100, unit=" points",
            reason=f"BN at batch {small} predicts differently in its two modes for "
                   f"{bn_small['disagreement']:.0%} of test images, yet still wins"))
    if "none" in norms:
        findings.append(_findings.compare(
            f"BN beats no normalization at batch {large}", bn_large["test_accuracy"],
            runs[f"none_batch{large}"]["test_accuracy"], scale=100, unit=" points",
            reason=_findings.lag_reason(bn_large["lag"])))
    return findings


def _plot(results: dict, args, path, dataset: str, examples: int):
    import matplotlib.pyplot as plt

    has_bn = "batch" in args.norms
    fig, axes = plt.subplots(1, 2 if has_bn else 1, figsize=(11 if has_bn else 6, 4), squeeze=False)
    axes = axes[0]
    for norm in args.norms:
        sizes = [b for b in args.batch_sizes if (norm, b) in results]
        axes[0].plot(sizes, [results[(norm, b)]["test_accuracy"] for b in sizes], marker="o", label=norm)
    axes[0].set(title=f"test accuracy after {examples} examples ({dataset})", xlabel="batch size", xscale="log")
    if has_bn:
        for key, label in (("train_mode_accuracy", "batch statistics"), ("inference_accuracy", "moving averages"),
                           ("disagreement", "predictions differing")):
            axes[1].plot(args.batch_sizes, [results[("batch", b)][key] for b in args.batch_sizes], marker="o", label=label)
        axes[1].set(title="BN: training-mode vs inference-mode outputs", xlabel="batch size", xscale="log")
    for ax in axes:
        ax.set_xticks(args.batch_sizes, [str(b) for b in args.batch_sizes])
    _common.finish_figure(fig, axes, path, legend_fontsize=8)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
