"""Fail early, with the install command, when no TensorFlow backend is installed.

Also quiets TensorFlow's C++ start-up messages (INFO/WARNING) unless the user has set
``TF_CPP_MIN_LOG_LEVEL`` already; errors still print.
"""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")



def configured_backend() -> str:
    """The Keras backend this process will use, as Keras picks it (``KERAS_BACKEND``, else the
    ``backend`` of ``$KERAS_HOME/keras.json`` or ``~/.keras/keras.json``, else tensorflow),
    without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    import json

    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as file:
            return str(json.load(file).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


if configured_backend() == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
    raise ImportError(
        "keras-bn runs Keras 3 on TensorFlow (the default backend), which is not installed. "
        "Install it with `pip install keras-bn[cpu]` (CPU, small download) or "
        "`pip install keras-bn[gpu]` (NVIDIA GPU, tensorflow[and-cuda]), or choose another backend: "
        "KERAS_BACKEND=jax with `pip install keras-bn[jax]` (docs/BACKENDS.md)."
    )

_NCHW_ON_CPU: dict = {}


def channels_first_runs() -> bool:
    """Whether this process can run a ``channels_first`` (NCHW) convolution outside XLA: on the
    TensorFlow backend without a GPU, TensorFlow's CPU kernels take NCHW only with oneDNN on,
    which TensorFlow leaves off on some CPUs. Measured once, on a 1x1 convolution."""
    if "result" not in _NCHW_ON_CPU:
        import keras

        if keras.backend.backend() != "tensorflow":
            _NCHW_ON_CPU["result"] = True
        else:
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                _NCHW_ON_CPU["result"] = True
            else:
                try:
                    tf.nn.conv2d(tf.zeros((1, 1, 2, 2)), tf.zeros((1, 1, 1, 1)), 1, "VALID", data_format="NCHW")
                    _NCHW_ON_CPU["result"] = True
                except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
                    _NCHW_ON_CPU["result"] = False
    return _NCHW_ON_CPU["result"]


def warn_if_channels_first_cannot_run(data_format: str) -> None:
    """Say at build time, instead of TensorFlow's error at the first call, when a channels_first
    model cannot run here, and name the ways out."""
    if data_format == "channels_first" and not channels_first_runs():
        from keras_bn import _warnings

        _warnings.warn(
            "keras_bn: TensorFlow on this CPU cannot run channels_first convolutions outside XLA "
            "(its oneDNN kernels are off here, e.g. TF_ENABLE_ONEDNN_OPTS=0 or a CPU where TensorFlow "
            "leaves them off): compile with jit_compile=True (XLA accepts NCHW) or build with "
            "data_format='channels_last'.",
            UserWarning,
        )
