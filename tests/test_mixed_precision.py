"""Mixed precision: builders keep normalization and the softmax in float32, gradient norms are
logged unscaled and every callback statistic is finite."""

import keras
import numpy as np
import pytest

import keras_bn
from tests._events import tag_step_counts, scalar_series


@pytest.fixture
def policy():
    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 12)).astype("float32"), rng.integers(0, 4, size=64).astype("int32")


def _norms_after_one_step(weights, log_dir, norm):
    x, y = _data()
    model = keras_bn.build_dense((12,), [16, 16], 4, norm=norm)
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    callbacks = keras_bn.callbacks.diagnostics(str(log_dir), probe=x[:32], every=1, figures=False)
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return model, callbacks[1]


@pytest.mark.parametrize("mixed", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_logged_gradient_norms_match_float32(tmp_path, policy, mixed, norm):
    weights = keras_bn.build_dense((12,), [16, 16], 4, norm=norm).get_weights()
    _, reference = _norms_after_one_step(weights, tmp_path / "f32", norm)
    policy(mixed)
    model, grads = _norms_after_one_step(weights, tmp_path / "mixed", norm)
    if mixed == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert float(model.optimizer.dynamic_scale.numpy()) > 1000  # the loss really was scaled
    # The global norm within 1e-2 (a loss-scaled norm would be ~32768x); single layers carry
    # the half-precision forward pass' rounding (measured up to 3% for bfloat16).
    f32 = scalar_series(tmp_path / "f32" / "train", "grad_global/norm")[1]
    mp = scalar_series(tmp_path / "mixed" / "train", "grad_global/norm")[1]
    assert mp == pytest.approx(f32, rel=1e-2)
    for layer, value in reference.latest_norms.items():
        assert grads.latest_norms[layer] == pytest.approx(value, rel=5e-2), layer
    # Every statistic the callbacks wrote is finite, and none counts non-finite values.
    counts = tag_step_counts(tmp_path / "mixed" / "train")
    tags = {t for t, _ in counts}
    assert {"activation_std/block1_relu", "activation_mean/block2_relu", "grad_global/norm"} <= tags
    for tag in tags - {"custom_scalars__config__"}:
        if tag.startswith("activation_hist/"):
            continue
        values = list(scalar_series(tmp_path / "mixed" / "train", tag).values())
        assert np.all(np.isfinite(values)), tag
        if tag.startswith("nonfinite/"):
            assert max(values) == 0, tag


@pytest.mark.parametrize("mixed", ["mixed_float16", "mixed_bfloat16"])
def test_builders_keep_norms_and_softmax_float32(policy, mixed):
    policy(mixed)
    low = mixed.split("_")[1]
    for norm, kind in (("batch", keras.layers.BatchNormalization), ("layer", keras.layers.LayerNormalization)):
        model = keras_bn.build_dense((12,), [8], 4, norm=norm)
        assert model.get_layer("block1_dense").compute_dtype == low
        assert model.output.dtype == "float32"  # the float32 softmax Keras recommends
        assert model.get_layer("predictions").compute_dtype == "float32"
        norm_layer = next(layer for layer in model.layers if isinstance(layer, kind))
        assert all(w.dtype == "float32" for w in norm_layer.weights)  # gamma/beta/moving stats
        # Keras computes BN/LN in float32 internally: a large input gives the float32 result.
        x = np.full((4, 8), 300.0, "float32") + np.arange(8, dtype="float32")
        out = np.asarray(norm_layer(x.astype(low), training=True), dtype="float32")
        assert np.all(np.isfinite(out))
    cnn = keras_bn.build_conv((8, 8, 1), [4], 3, norm="batch")
    assert cnn.output.dtype == "float32"
