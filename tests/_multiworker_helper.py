"""One worker of the multi-worker test (tests/test_distribute.py): TF_CONFIG comes from the
environment; trains a small sync-BN MLP for a few steps with the diagnostics preset under
MultiWorkerMirroredStrategy and prints one JSON line.

Usage: TF_CONFIG=... python tests/_multiworker_helper.py LOG_DIR
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import distribute  # noqa: E402

LOG_DIR = sys.argv[1]
strategy = distribute.make_strategy("multiworker")

import keras  # noqa: E402

keras.utils.set_random_seed(3)
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 12)).astype("float32")
y = rng.integers(0, 4, size=128).astype("int32")
with distribute.scope(strategy):
    model = keras_bn.build_dense((12,), [16, 16], 4, norm="sync_batch")
    model.compile(optimizer=keras_bn.optimizers.adam("global_clip", learning_rate=1e-2),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
callbacks = keras_bn.callbacks.diagnostics(LOG_DIR, probe=x[:32], every=1, figures=False)
history = model.fit(x, y, batch_size=32, epochs=1, steps_per_epoch=4, shuffle=False, verbose=0, callbacks=callbacks)
grad = callbacks[1]
print("RESULT " + json.dumps({
    "chief": distribute.is_chief(),
    "replicas": strategy.num_replicas_in_sync,
    "loss": [float(v) for v in history.history["loss"]],
    "weights": [w.ravel().tolist() for w in model.get_weights()],
    "steps": int(model.optimizer.iterations.numpy()),
    "latest_norms": grad.latest_norms,
    "compat_used": sorted(distribute.compat_used()),
}), flush=True)
