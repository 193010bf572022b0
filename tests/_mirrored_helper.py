"""Run in a subprocess by tests/test_distribute.py: 2 logical CPU devices, MirroredStrategy
against one device on the same global batches; prints one JSON line of measurements.

Usage: python tests/_mirrored_helper.py LOG_DIR
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn  # noqa: E402
from keras_bn import distribute  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests._events import scalar_series, tag_step_counts  # noqa: E402

LOG_DIR = sys.argv[1]
STEPS, BATCH = 3, 64
rng = np.random.default_rng(0)
X = rng.normal(size=(STEPS * BATCH, 12)).astype("float32")
Y = rng.integers(0, 4, size=STEPS * BATCH).astype("int32")
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def build(norm, weights=None):
    keras.utils.set_random_seed(7)
    model = keras_bn.build_dense((12,), [16, 16], 4, norm=norm)
    if weights is not None:
        model.set_weights(weights)
    return model


def train(strategy, norm, weights, log_dir, optimizer=lambda: keras.optimizers.Adam(1e-2), probe=True):
    with distribute.scope(strategy):
        model = build(norm, weights)
        model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = keras_bn.callbacks.diagnostics(log_dir, probe=X[:32] if probe else None, every=1, figures=False)
    history = model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return model, history, callbacks


out = {"replicas": STRATEGY.num_replicas_in_sync}
for norm in ("none", "sync_batch"):
    weights = build(norm).get_weights()
    single, _, _ = train(None, norm, weights, f"{LOG_DIR}/{norm}_single")
    mirrored, history, _ = train(STRATEGY, norm, weights, f"{LOG_DIR}/{norm}_mirrored")
    norms_single = scalar_series(f"{LOG_DIR}/{norm}_single/train", "grad_global/norm")
    norms_mirrored = scalar_series(f"{LOG_DIR}/{norm}_mirrored/train", "grad_global/norm")
    layer_single = scalar_series(f"{LOG_DIR}/{norm}_single/train", "grad_norm/block1_dense")
    layer_mirrored = scalar_series(f"{LOG_DIR}/{norm}_mirrored/train", "grad_norm/block1_dense")
    counts = tag_step_counts(f"{LOG_DIR}/{norm}_mirrored/train")
    entry = {
        "loss_finite": bool(np.all(np.isfinite(history.history["loss"]))),
        "steps": sorted(norms_mirrored),
        "global_single": [norms_single[s] for s in sorted(norms_single)],
        "global_mirrored": [norms_mirrored[s] for s in sorted(norms_mirrored)],
        "layer_single": [layer_single[s] for s in sorted(layer_single)],
        "layer_mirrored": [layer_mirrored[s] for s in sorted(layer_mirrored)],
        "max_tag_count": max(counts.values()),
        "tags_per_step": len({t for t, _ in counts}),
        "activation_tags": sorted({t for t, _ in counts if t.startswith("activation_mean/")}),
        "events_files": len(os.listdir(f"{LOG_DIR}/{norm}_mirrored/train")),
        "weights_max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), mirrored.get_weights())),
    }
    if norm == "sync_batch":
        bn_single, bn_mirrored = single.get_layer("block1_syncbn"), mirrored.get_layer("block1_syncbn")
        entry["moving_mean_diff"] = float(np.max(np.abs(bn_single.moving_mean.numpy() - bn_mirrored.moving_mean.numpy())))
        entry["moving_var_diff"] = float(np.max(np.abs(bn_single.moving_variance.numpy() - bn_mirrored.moving_variance.numpy())))
        entry["moving_mean_moved"] = float(np.max(np.abs(bn_mirrored.moving_mean.numpy())))
        folded = keras_bn.fold_batchnorm(mirrored)
        entry["fold_diff"] = float(np.max(np.abs(folded.predict(X[:64], verbose=0) - mirrored.predict(X[:64], verbose=0))))
        entry["fold_bn_left"] = sum(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
    out[norm] = entry

# Clipping: SGD(lr=1) makes the applied gradient visible in the weight change.
weights = build("none").get_weights()
x1, y1 = X[:BATCH], Y[:BATCH]


def sgd_step(strategy, hook, limit=0.05):
    with distribute.scope(strategy):
        model = build("none", weights)
        optimizer = keras.optimizers.SGD(1.0, global_clipnorm=limit)
        if hook:
            distribute.clip_after_aggregation(optimizer)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(x1, y1, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    delta = [w - v for w, v in zip(model.get_weights(), weights)]
    return float(np.sqrt(sum(np.sum(d.astype("float64") ** 2) for d in delta)))


out["clip"] = {
    "single": sgd_step(None, False),
    "mirrored_keras": sgd_step(STRATEGY, False),
    "mirrored_keras_bn": sgd_step(STRATEGY, True),
}
# The presets under a strategy, with GradientNorms logging pre-clip and applied norms.
for preset, limit_key in (("clip_per_variable", "clipnorm"), ("global_clip", "global_clipnorm")):
    log_dir = f"{LOG_DIR}/preset_{preset}"
    with STRATEGY.scope():
        model = build("none", weights)
        optimizer = keras_bn.optimizers.adam(preset, **{limit_key: 0.05})
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    hook = distribute.AggregationHook.of(optimizer, create=False)
    cbs = keras_bn.callbacks.diagnostics(log_dir, every=1, figures=False)
    model.fit(x1, y1, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=cbs)
    series = lambda tag: scalar_series(f"{log_dir}/train", tag)[1]  # noqa: E731
    out[preset] = {
        "hook_kept": bool(hook is not None and hook.keep),
        "hook_after_fit": distribute.AggregationHook.of(optimizer, create=False) is hook,
        "preclip": series("grad_global/norm_preclip"),
        "applied": series("grad_global/norm"),
        "layer_applied_max": max(series(f"grad_norm/{n}") for n in ("block1_dense", "block2_dense", "logits")),
        "clip_fraction": series("grad_global/clip_fraction"),
    }
out["preclip_single"] = out["none"]["global_single"][0]  # step 1: same weights, same batch

# Mixed precision under the strategy: the logged norm of step 1 against float32's.
keras.mixed_precision.set_global_policy("mixed_float16")
try:
    _, history, _ = train(STRATEGY, "sync_batch", build("sync_batch").get_weights(), f"{LOG_DIR}/mp_mirrored")
finally:
    keras.mixed_precision.set_global_policy("float32")
mp = scalar_series(f"{LOG_DIR}/mp_mirrored/train", "grad_global/norm")
out["mixed_float16"] = {"global_step1": mp[1], "float32_step1": out["sync_batch"]["global_single"][0],
                        "finite": bool(np.all(np.isfinite(list(mp.values()))))}
print("RESULT " + json.dumps(out))
