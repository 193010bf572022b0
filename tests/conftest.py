"""Shared test setup: quiet TensorFlow, deterministic seeds, the shared data folder."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

SHARED_FASHION_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


@pytest.fixture
def fashion_mnist_dir():
    """The full Fashion-MNIST IDX files beside the repo (../shared), or skip."""
    if not SHARED_FASHION_MNIST.is_dir():
        pytest.skip(f"full Fashion-MNIST not found at {SHARED_FASHION_MNIST}")
    return SHARED_FASHION_MNIST
