"""Norm-free residual nets: which deep ResNet trains without normalization, and why.

A ResNet-32 (option A shortcuts, 15 blocks; ``--depth 56`` for the paper's) without any norm, three ways, against the same net with BN:
``default`` (He init: every block adds its branch's variance to the sum, so the signal grows
about 2x per block and the net starts far out of range), ``zero_init`` (each branch's last
conv starts at zero: every block starts as the identity, Goyal et al. 2017) and ``fixup``
(Zhang et al. 2019: zero-init plus branch convs scaled by L^(-1/2), scalar biases and
multipliers, a zero classifier). Same optimizer, steps and data order. Measured at
initialization: the loss, the std of the last block's output and the kernel gradient norms
(the diagnostics that tell why a net will not train); after training: train error, test
accuracy and whether the loss diverged.

Usage::

    keras-bn run norm_free --quick
    python -m keras_bn.recipes.norm_free --depth 56 --steps 800 --batch-size 64
"""

from __future__ import annotations

import argparse
import math

from keras_bn import _arg_types as types
from keras_bn.recipes import _common
from keras_bn.recipes.degradation import BN_MOMENTUM, TrainError, downsample, grad_norm_summary

NAME = "norm_free"
DESCRIPTION = "A deep ResNet without norm: default init vs zero-init residuals vs Fixup, against BN."
# The doctor's view: ``default`` starts far out of range (its logits are huge at init, so the
# first loss is far above ln(C)) and may diverge; the other three start near ln(C) and train.
HEALTHY = ("bn", "zero_init", "fixup")
FAULTS = {"default": ("initial_loss", "diverging", "nonfinite_loss")}
# 6 blocks: the default net starts at loss 7.3-12.2 (seeds 0-2; ln 10 = 2.3, the rule's bound 3.45), its
# last block's std 9-27x zero_init's; it no longer diverges within the 20 steps, as at depth 20 (17.9)
QUICK_DEPTH = 14
SAME_NET = {"zero_init": "default"}  # variant -> the variant with the same layers (only the initial weights differ)
VARIANTS = {
    "bn": dict(norm="batch", norm_kwargs={"momentum": BN_MOMENTUM}),
    "default": dict(norm=None),
    "zero_init": dict(norm=None, zero_init_residual=True),
    "fixup": dict(norm=None, fixup=True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=types.positive_int, default=None,
                        help="6n+2 depth (default 32: 15 blocks, deep enough to show it; quick 14)")
    parser.add_argument("--widths", type=types.positive_int, nargs=3, default=None,
                        help="filters of the three stages (paper 16 32 64; default 8 16 32 for the CPU budget)")
    parser.add_argument("--steps", type=types.positive_int, default=None, help="training steps per net (default 600; quick 20)")
    parser.add_argument("--eval-every", type=types.positive_int, default=None, help="steps between evaluations (default 100)")
    parser.add_argument("--batch-size", type=types.positive_int, default=32, help="batch size (default 32, for the CPU budget)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=0.05, help="SGD learning rate, momentum 0.9 (default 0.05)")
    parser.add_argument("--image-size", type=types.positive_int, choices=(14, 28), default=14,
                        help="train on 2x2-average-pooled 14x14 images to fit the CPU budget (default 14)")


def at_init(model, x, y) -> dict:
    """Loss, last block's output std and gradient norms of `model` before any step, in
    training mode (BN with batch statistics, as the first step sees it; moving statistics kept)."""
    last_block = [layer.name for layer in model.layers if layer.name.endswith("_out_relu")][-1]
    start = _common.training_pass(model, x, y, [last_block])
    return {"loss": start["loss"], "last_block_std": float(start["outputs"][last_block].std()),
            "grads": grad_norm_summary(start["grad_norms"])}


def run(args: argparse.Namespace) -> dict:
    import keras

    import keras_bn

    depth = args.depth or (QUICK_DEPTH if args.quick else 32)
    widths = args.widths or [8, 16, 32]  # widths cost little; the depth and steps are what quick mode cuts
    steps = args.steps or (20 if args.quick else 600)
    eval_every = args.eval_every or (10 if args.quick else 100)
    data = _common.load_data(args, flatten=False)
    data = data._replace(x_train=downsample(data.x_train, args.image_size),
                         x_test=downsample(data.x_test, args.image_size))
    x_sub, y_sub = data.x_train[:500 if args.quick else 2000], data.y_train[:500 if args.quick else 2000]
    x_batch, y_batch = data.x_train[:args.batch_size], data.y_train[:args.batch_size]
    print(f"training ResNet-{depth} (widths {widths}) {', '.join(VARIANTS)} for {steps} steps each "
          f"on {len(data.x_train)} images")
    results, compiled = {}, {}
    for variant, options in VARIANTS.items():
        model = keras_bn.build_resnet(data.x_train.shape[1:], depth, data.num_classes, widths=widths,
                                      name=f"resnet{depth}_{variant}", **options)
        # default and zero_init differ only in initial weights: one traced model trains both
        model = _common.compiled_like(compiled, SAME_NET.get(variant, variant), model, lambda m: m.compile(
            optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
            loss="sparse_categorical_crossentropy", metrics=["accuracy"]))
        start = at_init(model, x_batch, y_batch)
        train_error = TrainError(x_sub, y_sub, each_epoch=False)  # the table shows the final error only
        callbacks = [train_error, *_common.training_callbacks(_common.run_dir(args, NAME, variant))]
        history = _common.train_for_steps(model, data, steps=steps, batch_size=args.batch_size,
                                          eval_every=eval_every, seed=args.seed, callbacks=callbacks, label=variant)
        results[variant] = {**history, "init": start, "train_error": train_error.errors}

    rows = []
    for variant, r in results.items():
        init = r["init"]
        rows.append([variant, init["loss"], init["last_block_std"], "{:.2g} / {:.2g} / {:.2g}".format(*init["grads"]),
                     r["loss"][-1], r["train_error"][-1] if r["train_error"] else float("nan"),
                     r["test_accuracy"][-1], "yes" if r["diverged"] else "no"])
    print(_common.format_table(
        ["variant", "loss at init", "last block std at init", "grad norm min/med/max at init",
         "final train loss", "train error", "test acc", "diverged"], rows))
    print(f"(a uniform guess has loss ln({data.num_classes}) = {math.log(data.num_classes):.3f})")
    shows = what_it_shows(results, data.num_classes, depth)
    print(shows["text"])
    _plot(results, _common.recipe_dir(args, NAME) / f"{NAME}.png", data.name, depth)
    return {"depth": depth, "widths": widths, "steps": steps, "runs": results, **shows}


def what_it_shows(results: dict, num_classes: int, depth: int) -> dict:
    """Whether this run showed the recipe's claims, from its own numbers: the default net starts
    out of range (its loss at init fails the doctor's ln(C) check), because its signal grows
    block by block (its last block's std against zero_init's); zero-init and Fixup start near ln(C)."""
    from keras_bn.doctor import initial_loss_verdict

    init = {variant: r["init"] for variant, r in results.items()}
    ln_c = math.log(num_classes)
    out_of_range = not initial_loss_verdict(init["default"]["loss"], num_classes)[0]
    growth = init["default"]["last_block_std"] / max(init["zero_init"]["last_block_std"], 1e-12)
    identity_ok = all(initial_loss_verdict(init[v]["loss"], num_classes)[0] for v in ("zero_init", "fixup"))
    start = (f"default (He init, no norm) starts at loss {init['default']['loss']:.3g} = "
             f"{init['default']['loss'] / ln_c:.1f}x ln({num_classes}), its last block's std {growth:.1f}x zero_init's")
    if out_of_range:
        text = f"what this run shows: {start}: out of range, as each block adds its branch's variance to the sum"
    else:
        text = (f"what this run shows: NOT the claim: {start}, within the doctor's ln(C) check: "
                f"{(depth - 2) // 2} blocks are too few for the growth to show (try --depth 32 or more)")
    text += (f"; zero_init and fixup start at {init['zero_init']['loss']:.3g} and {init['fixup']['loss']:.3g} "
             + ("(near ln(C), as identities)" if identity_ok else "(NOT near ln(C))"))
    return {"default_out_of_range": out_of_range, "identity_starts_near_ln_c": identity_ok, "growth": growth,
            "text": text}


def _plot(results: dict, path, dataset: str, depth: int):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for variant, r in results.items():
        axes[0].plot(r["step"], r["loss"], marker=".", label=variant)
        axes[1].plot(r["step"][:len(r["test_accuracy"])], r["test_accuracy"], marker=".", label=variant)
    axes[0].set(title=f"train loss, ResNet-{depth} ({dataset})", xlabel="step", yscale="log")
    axes[1].set(title="test accuracy", xlabel="step")
    _common.finish_figure(fig, axes, path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
