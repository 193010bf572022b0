"""The doctor's demo: a deep network that does not train, the cause named live, the fix trains.

A deep tanh MLP initialized with N(0, 0.01^2) (SEEDS §4: activations shrink layer by layer
toward 0, so the gradients reaching the first layers vanish) is trained with the diagnostics
preset; the live `keras_bn.callbacks.Doctor` prints what it finds as it finds it. The recipe
then applies the remedy the doctor names (Glorot init: ``initializer="auto"`` for tanh) to
the same network and trains it again: the loss falls and the doctor finds nothing serious.

Runs: ``tiny_init`` (a fault: it must get `FAULTS["tiny_init"]`) and ``glorot_init``
(healthy: no finding at warning or above).

Usage::

    keras-bn run doctor_demo --quick
    keras-bn report logs/doctor_demo/tiny_init
"""

from __future__ import annotations

import argparse

from keras_bn import _arg_types as types
from keras_bn.recipes import _common

NAME = "doctor_demo"
DESCRIPTION = "A deep tanh net that does not train; the live doctor names the cause, and its fix trains."
HEALTHY = ("glorot_init",)
FAULTS = {"tiny_init": ("collapsing_activations", "vanishing_gradients")}  # each fault run gets one of these
RUNS = ("tiny_init", "glorot_init")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=types.positive_int, default=8, help="hidden layers (default 8)")
    parser.add_argument("--units", type=types.positive_int, default=None, help="units per hidden layer (default 128; --quick 64)")
    parser.add_argument("--batch-size", type=types.positive_int, default=64, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=types.positive_float, default=0.01, help="SGD learning rate, momentum 0.9 (default 0.01)")


def build_model(run: str, input_dim: int, depth: int, units: int, num_classes: int):
    """The deep tanh MLP: N(0, 0.01^2) kernels for ``tiny_init``, Glorot for ``glorot_init``."""
    import keras

    import keras_bn

    initializer = keras.initializers.RandomNormal(stddev=0.01) if run == "tiny_init" else "auto"
    return keras_bn.build_dense((input_dim,), [units] * depth, num_classes, activation="tanh", norm=None,
                                initializer=initializer, name=run)


def run(args: argparse.Namespace) -> dict:
    import keras

    from keras_bn import doctor

    data = _common.load_data(args, flatten=True)
    epochs = args.epochs or (2 if args.quick else 5)
    every = 10 if args.quick else 50
    units = args.units or (64 if args.quick else 128)
    results = {"epochs": epochs, "runs": {}}
    compiled = {}  # the two runs differ only in initial weights: one traced model trains both
    for name in RUNS:
        banner = ("the broken network: N(0, 0.01^2) init" if name == "tiny_init"
                  else "the doctor's remedy applied: Glorot init (initializer='auto')")
        print(f"\n== {name}: {banner}; the doctor speaks when it finds something")
        model = _common.compiled_like(
            compiled, "tanh_mlp", build_model(name, data.x_train.shape[1], args.depth, units, data.num_classes),
            lambda m: m.compile(optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
                                loss="sparse_categorical_crossentropy", metrics=["accuracy"]))
        _common.ready_to_fit(model, data.x_train[:args.batch_size], data.y_train[:args.batch_size])
        path = _common.run_dir(args, NAME, name)
        fit = model.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=epochs, verbose=0,
                        callbacks=[_common.EagerValidation(data.x_test, data.y_test),  # validation_data's numbers
                                   *_common.training_callbacks(path, probe=data.x_test[:256], every=every)])
        findings = doctor.diagnose(path)
        causes = [f for rule in FAULTS.get(name, ()) for f in findings if f.rule == rule]  # FAULTS' order
        if causes:
            print(f"-> the doctor's diagnosis: {causes[0].what}; remedy: {causes[0].remedy}")
        results["runs"][name] = {"loss": [float(v) for v in fit.history["loss"]],
                                 "val_accuracy": [float(v) for v in fit.history["val_accuracy"]],
                                 "findings": findings}
    rows = []
    for name, result in results["runs"].items():
        serious = [f.rule for f in result["findings"] if f.severity in ("error", "warning")]
        rows.append([name, result["loss"][0], result["loss"][-1], result["val_accuracy"][-1],
                     ", ".join(dict.fromkeys(serious)) or "none"])
    print()
    print(_common.format_table(["run", "first epoch loss", "last epoch loss", "test acc", "doctor's findings"], rows))
    return results


def main(argv=None) -> dict:
    return _common.main(NAME, DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    main()
