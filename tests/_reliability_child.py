"""A child training process for tests/test_reliability_processes.py.

``python -m tests._reliability_child MODE LOG --flush-secs S``:

- ``forever``: trains a tiny MLP with `diagnostics(LOG, every=1)` for up to 10,000 epochs of 20
  steps; prints ``STEP <n>`` after each step and ``FLUSHED <n>`` after each epoch end (the
  diagnostics flush there, before this callback runs), so the parent knows what is on disk.
- ``short``: ``LOG`` is a log *root*: takes ``unique_run_dir(LOG, name="run")``, prints
  ``RUN <dir>``, trains 2 epochs of 5 steps and exits.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_bn import callbacks as kbc  # noqa: E402


class Report(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print(f"STEP {int(self.model.optimizer.iterations.numpy())}", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        print(f"FLUSHED {int(self.model.optimizer.iterations.numpy())}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["forever", "short"])
    parser.add_argument("log")
    parser.add_argument("--flush-secs", type=float, default=5.0)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="dense")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(hidden))
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 8)).astype("float32"), np.arange(80) % 3
    if args.mode == "short":
        log_dir = kbc.unique_run_dir(args.log, name="run")
        print(f"RUN {log_dir}", flush=True)
        epochs, x, y = 2, x[:40], y[:40]
    else:
        log_dir, epochs = args.log, 10_000
    callbacks = kbc.diagnostics(log_dir, probe=x[:16], every=1, figures=False, flush_secs=args.flush_secs,
                                max_overhead=None, max_read_overhead=None)  # every step, whatever the machine's speed
    model.fit(x, y, batch_size=8 if args.mode == "short" else 4, epochs=epochs, verbose=0,
              callbacks=callbacks + ([Report()] if args.mode == "forever" else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
