"""keras-bn on the PyTorch backend without TensorFlow: the checks of tests/test_backend_jax.py
(every module imports; build, fit with activation statistics, fold, lr_find to TensorBoard; the
backend from keras.json), run on torch. They start their own process, so they run from any
backend's test run when torch is installed (docs/BACKENDS.md has the torch command)."""

import importlib.util

import pytest

from tests.test_backend_jax import check_backend_from_keras_json, check_process_without_tensorflow

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch is not installed (pip install keras-bn[torch])")


def test_a_torch_process_without_tensorflow_builds_fits_folds_and_writes_event_files(tmp_path):
    check_process_without_tensorflow(tmp_path, "torch")


def test_the_backend_in_keras_json_is_respected_without_tensorflow(tmp_path):
    check_backend_from_keras_json(tmp_path, "torch")
