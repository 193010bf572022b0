"""Grid vs random search on one trial budget, then coarse-to-fine (SEEDS §7).

The MLP's learning rate matters and its dropout much less. On the same budget (`--trials`),
a grid over (learning rate, dropout) tries only sqrt(budget) learning rates while random
search tries one per trial; the table gives the best validation accuracy of each and how
many distinct learning rates each tried. Then a coarse random search (1 epoch per trial)
narrows the ranges around its best trials and a fine search continues inside them. Every
trial is in TensorBoard's HParams dashboard (``<log_dir>/hparam_search/<search>/``) and in
``trials.csv``. Validation data: the last 20% of the training images (never the test set).
The best trial of coarse-to-fine is retrained with the diagnostics on (run ``best_trial``).

Usage::

    keras-bn run hparam_search --quick
    python -m keras_bn.recipes.hparam_search --data-dir ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse

from keras_bn import _arg_types as types
from keras_bn.recipes import _common, _findings

NAME = "hparam_search"
DESCRIPTION = "Grid vs random search on the same budget (distinct learning rates tried), then coarse-to-fine."
# The trials log their hyperparameters and epoch metrics; the best trial of coarse-to-fine is then
# retrained with the diagnostics on, in this run, for the doctor (issue 19).
CHECK_RUN = "best_trial"
HEALTHY = (CHECK_RUN,)
FAULTS: dict = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=types.positive_int, default=None, help="budget of grid and of random search (default 9; 2 with --quick)")
    parser.add_argument("--train-samples", type=types.positive_int, default=None,
                        help="training images used, before the 20%% validation hold-out (default 20000; 1000 with --quick)")
    parser.add_argument("--batch-size", type=types.positive_int, default=128, help="batch size (default 128)")
    parser.add_argument("--min-lr", type=types.positive_float, default=1e-5, help="low end of the learning-rate range (default 1e-5)")
    parser.add_argument("--max-lr", type=types.positive_float, default=1.0, help="high end of the learning-rate range (default 1)")


def run(args: argparse.Namespace) -> dict:
    import keras_bn
    from keras_bn import search
    from keras_bn._training import holdout
    from keras_bn.optimizers import adam

    data = _common.load_data(args, flatten=True)
    samples = args.train_samples or (1000 if args.quick else 20000)
    x, y, (x_val, y_val) = holdout(data.x_train[:samples], data.y_train[:samples])
    trials = args.trials or (2 if args.quick else 9)
    epochs = args.epochs or (1 if args.quick else 2)
    space = {"learning_rate": search.Range(args.min_lr, args.max_lr),
             "dropout": search.Range(0.0, 0.5, log=False)}
    input_dim = x.shape[1]

    def model_fn(hp):
        model = keras_bn.build_dense((input_dim,), [32, 32], data.num_classes, dropout=hp["dropout"])
        # compiled as the searches would (Adam at the trial's rate); quick mode's trials of a few
        # steps run eagerly, which costs less than tracing a new model's step (the same numbers)
        model.compile(optimizer=adam(learning_rate=hp["learning_rate"]), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], run_eagerly=args.quick)
        return model

    # The tables rank by validation accuracy, so the searches do too (search's default is val_loss).
    common = dict(batch_size=args.batch_size, epochs=epochs, objective="val_accuracy")
    print(f"{trials} trials each, {epochs} epochs, {len(x)} training / {len(x_val)} validation images")
    results = {
        "grid": search.grid_search(model_fn, space, (x, y, x_val, y_val), trials,
                                   log_dir=_common.run_dir(args, NAME, "grid"), **common),
        "random": search.random_search(model_fn, space, (x, y, x_val, y_val), trials, seed=args.seed,
                                       log_dir=_common.run_dir(args, NAME, "random"), **common),
    }
    rows = [[kind, len(r.trials), r.best.val_accuracy, r.best.hparams["learning_rate"],
             r.distinct_values("learning_rate"), sum(t.diverged for t in r.trials)] for kind, r in results.items()]
    comparison = _common.format_table(
        ["search", "trials", "best val acc", "its learning rate", "distinct learning rates", "killed (3x rule)"], rows)
    print(comparison)

    coarse_trials, fine_trials = (trials, max(1, trials // 2)) if args.quick else (2 * trials, trials)
    c2f = search.coarse_to_fine(model_fn, space, (x, y, x_val, y_val), coarse_trials, fine_trials, seed=args.seed,
                                coarse_epochs=1, fine_epochs=epochs, batch_size=args.batch_size, objective="val_accuracy",
                                log_dir=_common.run_dir(args, NAME, "coarse_to_fine"))
    stage_rows = []
    for stage, space_used in (("coarse", space), ("fine", c2f.fine_space)):
        part = c2f.stage(stage)
        lr = space_used["learning_rate"]
        stage_rows.append([stage, len(part.trials), f"{lr.low:.3g} .. {lr.high:.3g}", part.best.val_accuracy,
                           part.best.hparams["learning_rate"], sum(t.diverged for t in part.trials)])
    stages = _common.format_table(["stage", "trials", "learning-rate range", "best val acc", "its learning rate",
                                   "killed (3x rule)"], stage_rows)
    print(stages)
    for message in c2f.edge_warnings:
        print(f"warning: {message}")
    folder = _common.recipe_dir(args, NAME)
    for kind, result in {**results, "coarse_to_fine": c2f}.items():
        result.save(folder / f"{kind}_trials.csv")
    _plot(results, c2f, folder / f"{NAME}.png")
    retrain_best(args, model_fn, c2f.best.hparams, (x, y, x_val, y_val), epochs)
    findings = explain(results, c2f)
    _findings.report(findings)
    return {"dataset": data.name, "trials": trials, "epochs": epochs, "results": results, "coarse_to_fine": c2f,
            "tables": (comparison, stages), "findings": findings}


def retrain_best(args: argparse.Namespace, model_fn, hparams: dict, data, epochs: int) -> None:
    """Train `model_fn(hparams)` as its trial was (Adam at its learning rate) with the
    diagnostics on, in run `CHECK_RUN`: what the doctor reads of this recipe."""
    x, y, x_val, y_val = data
    model = model_fn(hparams)
    model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])  # traced: the diagnostics' taps
    _common.ready_to_fit(model, x[:args.batch_size], y[:args.batch_size])
    steps = -(-len(x) // args.batch_size)
    print(f"retraining the best trial ({', '.join(f'{k}={v:.3g}' for k, v in hparams.items())}) "
          f"with the diagnostics on: run {CHECK_RUN}")
    model.fit(x, y, batch_size=args.batch_size, epochs=epochs, verbose=0,
              callbacks=[_common.EagerValidation(x_val, y_val),  # validation_data's numbers, no traced test step
                         *_common.training_callbacks(_common.run_dir(args, NAME, CHECK_RUN),
                                                     probe=None if args.quick else x_val[:256], fit_steps=steps)])


def explain(results: dict, c2f) -> list:
    """The claims on this run's searches: on the same budget random search tries more distinct
    learning rates than a grid and finds at least as good a one; the fine stage of
    coarse-to-fine improves on the coarse one."""
    grid, random = results["grid"], results["random"]
    distinct_grid, distinct_random = grid.distinct_values("learning_rate"), random.distinct_values("learning_rate")
    coarse, fine = c2f.stage("coarse"), c2f.stage("fine")
    return [
        _findings.Finding("random search tries more distinct learning rates than the grid",
                          distinct_random > distinct_grid,
                          f"{distinct_random} vs {distinct_grid} in {len(random.trials)} trials each",
                          "the budget is too small for the grid to repeat its learning rates"),
        _findings.compare("random search's best validation accuracy is at least the grid's",
                          random.best.val_accuracy, grid.best.val_accuracy, scale=100, unit=" points", ties_hold=True,
                          reason=f"random's best rate {random.best.hparams['learning_rate']:.3g} vs the grid's "
                                 f"{grid.best.hparams['learning_rate']:.3g}"),
        _findings.compare("the fine stage improves on the coarse stage", fine.best.val_accuracy,
                          coarse.best.val_accuracy, scale=100, unit=" points", ties_hold=True,
                          reason=f"the fine range {c2f.fine_space['learning_rate'].low:.3g} .. "
                                 f"{c2f.fine_space['learning_rate'].high:.3g} holds no better rate at "
                                 f"{len(fine.trials)} trials"),
    ]


def _plot(results: dict, c2f, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, parts, title in ((axes[0], results, "grid vs random"),
                             (axes[1], {s: c2f.stage(s) for s in ("coarse", "fine")}, "coarse to fine")):
        for label, result in parts.items():
            ok = [t for t in result.trials if not t.diverged]
            bad = [t for t in result.trials if t.diverged]
            points = ax.semilogx([t.hparams["learning_rate"] for t in ok], [t.val_accuracy for t in ok], "o", label=label)
            ax.semilogx([t.hparams["learning_rate"] for t in bad], [0.0] * len(bad), "x",
                        color=points[0].get_color(), label=f"{label}: killed")
        ax.set(title=title, xlabel="learning rate", ylabel="validation accuracy")
    _common.finish_figure(fig, axes, path)


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
