"""Fail early, with the install command, when no TensorFlow backend is installed.

Also quiets TensorFlow's C++ start-up messages (INFO/WARNING) unless the user has set
``TF_CPP_MIN_LOG_LEVEL`` already; errors still print.
"""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
    raise ImportError(
        "keras-bn runs Keras 3 on TensorFlow, which is not installed. "
        "Install it with `pip install keras-bn[cpu]` (CPU, small download) or "
        "`pip install keras-bn[gpu]` (NVIDIA GPU, tensorflow[and-cuda])."
    )
