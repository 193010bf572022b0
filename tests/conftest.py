"""Shared test setup: quiet TensorFlow, deterministic seeds, the shared data folder."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

SHARED_FASHION_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"


@pytest.fixture(autouse=True)
def _exact_activation_cadence(monkeypatch):
    """The preset reads on every schedule, as tests of per-step logging expect.

    Its time budget (``max_overhead=0.02``) makes the cadence depend on the machine's speed;
    test_callbacks.py::test_max_overhead_skips_scheduled_reads_not_epoch_ends tests it with
    a fake clock (and `monkeypatch.undo()` to see the real default).
    """
    from keras_bn.callbacks import preset

    monkeypatch.setattr(preset, "ACTIVATION_OVERHEAD", None)
    # Likewise the budget of the step reads (`max_read_overhead`), tested in test_preset.py.
    monkeypatch.setitem(preset.diagnostics.__kwdefaults__, "max_read_overhead", None)


@pytest.fixture(autouse=True, scope="session")
def _stop_the_figure_process():
    """The child process that draws the callbacks' figures ends with the session's tests."""
    yield
    from keras_bn.callbacks import _figure_process

    _figure_process.close()


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


# --- backends (owner: jaxrest) ---
# Every test runs on every Keras backend (KERAS_BACKEND=tensorflow | jax | torch) unless it is
# marked `@pytest.mark.backends("tensorflow", reason="tf.distribute")` or its whole file is
# listed here; on another backend it skips with a reason naming the backend it needs.
BACKEND_ONLY_FILES = {
    "test_distribute.py": (("tensorflow",), "tf.distribute strategies"),
    "test_keras_internals.py": (("tensorflow",), "checks the TensorFlow trainer's private names"),
    "test_time_gradients.py": (("tensorflow",), "the recurrent time-gradient tap and its tf.GradientTape references"),
    "test_zoo.py": (("tensorflow",), "reference gradients from tf.GradientTape in a tf.function"),
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "backends(*names, reason): runs only on these Keras backends, skips (naming them) on others")


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is not None:
            names, reason = marker.args, marker.kwargs.get("reason", "")
        elif item.path.name in BACKEND_ONLY_FILES:
            names, reason = BACKEND_ONLY_FILES[item.path.name]
        else:
            continue
        if backend not in names:
            item.add_marker(pytest.mark.skip(
                reason=f"needs the {' or '.join(names)} backend ({reason}); this run is KERAS_BACKEND={backend}"))
