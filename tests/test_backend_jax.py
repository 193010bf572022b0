"""keras-bn on the JAX backend without TensorFlow: build, fit with activation statistics, fold,
lr_find to TensorBoard, and the refusals of TensorFlow-only features (docs/BACKENDS.md).

`check_process_without_tensorflow` and `check_backend_from_keras_json` take the backend's name:
tests/test_backend_torch.py runs the same checks on PyTorch."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_bn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WITHOUT_TF = textwrap.dedent("""
    import sys
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError from here on
    import json, os
    os.environ["KERAS_BACKEND"] = sys.argv[2]
    import numpy as np
    import keras, keras_bn
    from keras_bn import events, lr_find
    from keras_bn.callbacks import ActivationStats

    import importlib, pkgutil  # every module of the package imports without TensorFlow
    unimportable = {}
    for module in pkgutil.walk_packages(keras_bn.__path__, "keras_bn."):
        try:
            importlib.import_module(module.name)
        except Exception as error:  # noqa: BLE001  reported by the test
            unimportable[module.name] = repr(error)
    log_dir = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, size=64)
    model = keras_bn.build_dense((8,), [16, 16], 3, norm="batch")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0,
              callbacks=[ActivationStats(os.path.join(log_dir, "fit"), x[:16], every=2)])
    relu = keras.Model(model.inputs, model.get_layer("block1_relu").output)(x[:16], training=False)
    folded = keras_bn.fold_batchnorm(model)
    result = lr_find.lr_find(model, (x, y), batch_size=16, steps=12, log_dir=os.path.join(log_dir, "lr"))
    fit_run = events.read_run_details(os.path.join(log_dir, "fit"))
    lr_run = events.read_run_details(os.path.join(log_dir, "lr"))
    print(json.dumps({
        "backend": keras.backend.backend(),
        "unimportable": unimportable,
        "fold_max_diff": float(np.abs(model.predict(x, verbose=0) - folded.predict(x, verbose=0)).max()),
        "relu_mean": float(np.mean(keras.ops.convert_to_numpy(relu))),
        "written_means": fit_run.scalars["activation_mean/block1_relu"].pairs(),
        "problems": [str(p) for p in fit_run.problems + lr_run.problems],
        "lr_points": len(result.lrs),
        "lr_smoothed": lr_run.scalars["lr_find/smoothed_loss"].pairs(),
        "smoothed": [float(v) for v in result.smoothed],
        "tf_modules": sorted(m for m in sys.modules if m.startswith("tensorflow") and sys.modules[m] is not None),
    }))
""")


def check_process_without_tensorflow(tmp_path, backend: str) -> None:
    """Every keras_bn module imports, and the features docs/BACKENDS.md marks yes for `backend`
    run, in a process where `import tensorflow` fails."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_TF, str(tmp_path), backend], capture_output=True,
                            text=True, cwd=REPO, timeout=600, env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["backend"] == backend and out["tf_modules"] == [] and out["problems"] == []
    assert out["unimportable"] == {}
    assert out["fold_max_diff"] < 1e-5
    # the last activation mean written (epoch 2's end) is the final model's, computed here by Keras
    last_step, last_mean = max(out["written_means"])
    assert last_step == 8 and last_mean == pytest.approx(out["relu_mean"], rel=1e-5)
    assert [step for step, _ in out["lr_smoothed"]] == list(range(out["lr_points"]))
    np.testing.assert_allclose([v for _, v in out["lr_smoothed"]], out["smoothed"], rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install keras-bn[jax])")
def test_a_jax_process_without_tensorflow_builds_fits_folds_and_writes_event_files(tmp_path):
    check_process_without_tensorflow(tmp_path, "jax")


@pytest.mark.backends("jax", "torch", reason="TensorFlow runs synchronized BatchNormalization")
def test_sync_batch_norm_refuses_off_tensorflow_and_names_what_to_use():
    with pytest.raises(ValueError, match=rf"needs the TensorFlow backend\. On {keras.backend.backend()}, use norm='batch'"):
        keras_bn.build_dense((4,), [4], 2, norm="sync_batch")


DATA_PARALLEL_BN = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # before JAX is imported
    os.environ["KERAS_BACKEND"] = "jax"
    import json
    import jax, keras, numpy as np
    import keras_bn.norms
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    x = np.concatenate([np.zeros((4, 3)), np.full((4, 3), 10.0)]).astype("float32")  # one half per device
    inputs = keras.Input((3,))
    bn = keras_bn.norms.make_norm("batch", channels=3, name="bn", norm_kwargs={"momentum": 0.0})
    model = keras.Model(inputs, keras.layers.Dense(1)(bn(inputs)))
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((8, 1), "float32"), batch_size=8, epochs=1, verbose=0, shuffle=False)
    print(json.dumps({"devices": len(jax.devices()), "mean": keras.ops.convert_to_numpy(bn.moving_mean).tolist(),
                      "var": keras.ops.convert_to_numpy(bn.moving_variance).tolist()}))
""")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install keras-bn[jax])")
def test_batch_norm_under_jax_data_parallel_uses_the_global_batch(tmp_path):
    """What the sync_batch refusal tells JAX users: norm='batch' under keras.distribution's
    DataParallel already normalizes over the global batch (two host devices, one half each)."""
    result = subprocess.run([sys.executable, "-c", DATA_PARALLEL_BN], capture_output=True, text=True, cwd=REPO,
                            timeout=600, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    x = np.concatenate([np.zeros((4, 3)), np.full((4, 3), 10.0)])
    assert out["devices"] == 2
    np.testing.assert_allclose(out["mean"], x.mean(0), rtol=1e-6)  # each device's own mean would be 0 or 10
    np.testing.assert_allclose(out["var"], x.var(0), rtol=1e-5)


@pytest.mark.backends("jax", "torch", reason="TensorFlow runs tf.distribute strategies")
@pytest.mark.parametrize("name", ["mirrored", "multiworker"])
def test_tf_distribute_strategies_refuse_off_tensorflow_and_name_keras_distribution(name):
    from keras_bn import distribute

    with pytest.raises(ValueError, match=rf"needs the TensorFlow backend.*keras\.distribution\.DataParallel.*strategy='{name}'"):
        distribute.make_strategy(name)


def check_backend_from_keras_json(tmp_path, backend: str) -> None:
    """Keras reads the backend from KERAS_BACKEND, else keras.json: so does keras-bn's install check."""
    (tmp_path / "keras.json").write_text(json.dumps({"backend": backend}))
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "import keras_bn, keras; print(keras.backend.backend(), keras_bn.build_dense((4,), [4], 2).count_params())")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**env, "KERAS_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    # the dense kernel (no bias: BN follows), BN's gamma, beta, mean and variance, the logits
    assert result.stdout.split() == [backend, str(4 * 4 + 4 * 4 + (4 * 2 + 2))]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install keras-bn[jax])")
def test_the_backend_in_keras_json_is_respected_without_tensorflow(tmp_path):
    check_backend_from_keras_json(tmp_path, "jax")
