"""Quick keras-bn TensorBoard logs for the end-to-end tests, and the tags they must show.

`write_quick_logs(log_dir)` trains two tiny `keras_bn.build_dense` models for one epoch of 3
steps with `keras_bn.callbacks.diagnostics(every=1)` (``relu_clip``: ReLU with a clipping
optimizer, so dead-unit and clip tags exist; ``sigmoid``: saturation and pre-activation
tags) and writes a one-trial HParams experiment (``hparams/``). It returns the runs and tags
expected, computed from the models' layers and the tag table of `keras_bn.callbacks`.

Usage::

    expected = write_quick_logs(tmp_path)
    expected.scalars["relu_clip/train"]  # {"grad_norm/block1_dense", ...}
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

import keras_bn
import keras_bn.callbacks as kbc
from keras_bn.activations import activation_family

CATEGORY = "keras-bn diagnostics"  # the custom-scalars category every diagnostics run writes
PERCENTILES_CATEGORY = "keras-bn: pre-activation percentiles (BN paper, Fig. 1)"  # tanh/sigmoid models
HPARAMS = {"learning_rate": 1e-3, "activation": "relu"}
HPARAMS_METRIC = "val_accuracy"


@dataclasses.dataclass
class Expected:
    """Runs and tags a TensorBoard server must serve for `write_quick_logs`' logs."""

    runs: set = dataclasses.field(default_factory=set)
    scalars: dict = dataclasses.field(default_factory=dict)  # run -> set of tags
    histograms: dict = dataclasses.field(default_factory=dict)
    images: dict = dataclasses.field(default_factory=dict)
    charts: dict = dataclasses.field(default_factory=dict)  # custom-scalars chart title -> tag regex
    layers: dict = dataclasses.field(default_factory=dict)  # run -> (layers with weights, activation layers)


def diagnostic_tags(model: keras.Model, clipping: bool):
    """(scalar, histogram, image) tags that `diagnostics` writes to the train run of `model`,
    and the custom-scalars charts ``{title: regex}`` it lays out; from the model's layers."""
    with_weights = [layer.name for layer in model.layers if layer.trainable_weights]
    acts = [(layer.name, activation_family(layer)) for layer in model.layers
            if activation_family(layer) and not layer.trainable_weights]
    scalars = {"batch_loss", "batch_accuracy", "epoch_loss", "epoch_accuracy", "epoch_learning_rate",
               "grad_global/norm", "grad_global/norm_max", "nonfinite/grad_steps"}
    scalars |= {f"{q}/{name}" for name in with_weights for q in ("grad_norm", "update_ratio")}
    # batch_* (x = step) and epoch_* (x = epoch index) series get charts of their own.
    charts = {"loss per step (batch_*, x = optimizer step)": "batch_loss",
              "loss per epoch (epoch_*, x = epoch index)": "epoch_loss",
              "metrics per step (batch_*, x = optimizer step)": "batch_(?!loss$|learning_rate$).*",
              "metrics per epoch (epoch_*, x = epoch index)": "epoch_(?!loss$|learning_rate$).*",
              "gradient norm per layer": "grad_norm/.*",
              "update / weight ratio per layer (guide line 1e-3)": "update_ratio/.*",
              "activation mean per layer": "activation_mean/.*",
              "activation std per layer": "activation_std/.*"}
    if clipping:
        scalars |= {f"grad_norm_preclip/{name}" for name in with_weights}
        scalars |= {"grad_global/norm_preclip", "grad_global/clip_fraction"}
        charts["gradient norm before clipping per layer"] = "grad_norm_preclip/.*"
        charts["global gradient norm and clip fraction (share of steps clipped)"] = "grad_global/.*"
    for name, family in acts:
        scalars |= {f"activation_mean/{name}", f"activation_std/{name}", f"nonfinite/activations/{name}"}
        if family == "relu":
            scalars |= {f"dead_fraction/{name}", f"zero_fraction/{name}"}
            charts["dead-unit fraction per layer"] = "dead_fraction/.*"
            charts["zero fraction per layer"] = "zero_fraction/.*"
        else:
            scalars |= {f"saturation/{name}"} | {f"preact/{name}/p{q}" for q in (15, 50, 85)}
            charts["saturation per layer"] = "saturation/.*"
            charts[f"pre-activation percentiles (BN paper Fig. 1): {name}"] = rf"preact/{name}/p\d+"
    histograms = {f"activation_hist/{name}" for name, _ in acts}
    images = {"figures/activation_histograms", "figures/grad_norms"}
    return scalars, histograms, images, charts, (with_weights, [name for name, _ in acts])


def write_quick_logs(log_dir) -> Expected:
    """Write the quick diagnostics runs and the HParams experiment under `log_dir`."""
    log_dir = os.fspath(log_dir)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(24, 6)).astype("float32")
    y = np.arange(24) % 3
    expected = Expected()
    for run, activation, clipping in (("relu_clip", "relu", True), ("sigmoid", "sigmoid", False)):
        model = keras_bn.build_dense((6,), [5, 5], 3, activation=activation)
        optimizer = keras.optimizers.Adam(1e-3, global_clipnorm=1.0) if clipping else keras.optimizers.Adam(1e-3)
        model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
        callbacks = kbc.diagnostics(os.path.join(log_dir, run), probe=x[:8], every=1, max_read_overhead=None)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y), callbacks=callbacks)
        scalars, histograms, images, charts, layers = diagnostic_tags(model, clipping)
        expected.runs |= {f"{run}/train", f"{run}/validation"}
        expected.scalars[f"{run}/train"] = scalars
        expected.scalars[f"{run}/validation"] = {"epoch_loss", "epoch_accuracy"}
        expected.histograms[f"{run}/train"] = histograms
        expected.images[f"{run}/train"] = images
        expected.charts.update(charts)
        expected.layers[run] = layers
    write_hparams_experiment(os.path.join(log_dir, "hparams"))
    keras_bn.events.finish_writes(log_dir)  # the train-end figures are drawn after fit returned
    expected.runs.add("hparams/trial_0")
    expected.scalars["hparams/trial_0"] = {HPARAMS_METRIC}
    return expected


def write_hparams_experiment(root: str) -> None:
    """One HParams trial (``<root>/trial_0``) with `HPARAMS` and a `HPARAMS_METRIC` scalar."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    params = {"learning_rate": hp.HParam("learning_rate", hp.RealInterval(1e-5, 1e-1)),
              "activation": hp.HParam("activation", hp.Discrete(["relu", "sigmoid"]))}
    writer = tf.summary.create_file_writer(root)
    with writer.as_default():
        hp.hparams_config(hparams=list(params.values()), metrics=[hp.Metric(HPARAMS_METRIC)])
    writer.close()
    writer = tf.summary.create_file_writer(os.path.join(root, "trial_0"))
    with writer.as_default():
        hp.hparams({params[k]: v for k, v in HPARAMS.items()}, trial_id="trial_0")
        tf.summary.scalar(HPARAMS_METRIC, 0.75, step=1)
    writer.close()
