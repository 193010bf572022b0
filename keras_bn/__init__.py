"""keras-bn: see why a deep Keras network will not train.

Builders with normalization placed before the activation, diagnostics callbacks for
TensorBoard, Adam clipping presets, BN folding and the classic experiments as recipes.

Usage::

    import keras_bn
    model = keras_bn.build_dense((784,), [32, 32], 10)
"""

from keras_bn import _backend  # noqa: F401  (checks that a Keras backend is installed)
from keras_bn.activations import Maxout
from keras_bn.block_options import BlockOptions
from keras_bn.builders import build_conv, build_dense
from keras_bn.bn_stats import BatchNormReport, BatchNormRow, check_batchnorm
from keras_bn.folding import FoldReport, fold_batchnorm
from keras_bn.layers import ConvBlock, DenseBlock
from keras_bn.resnet import build_resnet
from keras_bn.residual_layers import ScalarBias, ScalarScale, ZeroPadShortcut
from keras_bn.recurrent import LayerNormGRUCell, LayerNormLSTMCell, LayerNormSimpleRNNCell, build_recurrent
from keras_bn import callbacks, data, distribute, lr_find, optimizers, report, sanity, search  # noqa: E402  (submodules)
from keras_bn import bn_stats  # noqa: E402  (submodule)
from keras_bn.sanity import LossGuard, sanity_check
from keras_bn import events  # noqa: E402  (event files without TensorFlow)
from keras_bn import doctor, precise_bn  # noqa: E402  (doctor's submodules)
from keras_bn.precise_bn import recompute_batchnorm_statistics

__version__ = "0.1.0"

__all__ = [
    "BatchNormReport",
    "BatchNormRow",
    "BlockOptions",
    "ConvBlock",
    "DenseBlock",
    "FoldReport",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "LayerNormSimpleRNNCell",
    "LossGuard",
    "Maxout",
    "ScalarBias",
    "ScalarScale",
    "ZeroPadShortcut",
    "__version__",
    "bn_stats",
    "build_conv",
    "build_dense",
    "build_recurrent",
    "build_resnet",
    "callbacks",
    "check_batchnorm",
    "data",
    "distribute",
    "doctor",
    "events",
    "fold_batchnorm",
    "lr_find",
    "optimizers",
    "precise_bn",
    "recompute_batchnorm_statistics",
    "recurrent",
    "report",
    "sanity",
    "sanity_check",
    "search",
]


def __getattr__(name: str):
    """`keras_bn.BatchNormCheck`, the old name of `BatchNormReport`, still works (with a warning)."""
    if name == "BatchNormCheck":
        import warnings

        warnings.warn("keras_bn.BatchNormCheck was renamed keras_bn.BatchNormReport (the callback "
                      "keras_bn.callbacks.BatchNormCheck keeps its name).", DeprecationWarning, stacklevel=2)
        return BatchNormReport
    raise AttributeError(f"module 'keras_bn' has no attribute {name!r}")
