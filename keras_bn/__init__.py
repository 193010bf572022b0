"""keras-bn: see why a deep Keras network will not train.

Builders with normalization placed before the activation, diagnostics callbacks for
TensorBoard, Adam clipping presets, BN folding and the classic experiments as recipes.

Usage::

    import keras_bn
    model = keras_bn.build_dense((784,), [32, 32], 10)
"""

from keras_bn import _backend  # noqa: F401  (checks that a Keras backend is installed)
from keras_bn.activations import Maxout
from keras_bn.builders import build_conv, build_dense
from keras_bn.callbacks._reductions import activation_statistics, nearest_rank_percentiles
from keras_bn.folding import BatchNormCheck, BatchNormRow, FoldReport, check_batchnorm, fold_batchnorm
from keras_bn.layers import ConvBlock, DenseBlock
from keras_bn import callbacks, data, distribute, lr_find, optimizers, report, sanity, search  # noqa: E402  (submodules)
from keras_bn.sanity import LossGuard, sanity_check

__version__ = "0.1.0"

__all__ = [
    "BatchNormCheck",
    "BatchNormRow",
    "ConvBlock",
    "DenseBlock",
    "FoldReport",
    "LossGuard",
    "Maxout",
    "__version__",
    "activation_statistics",
    "build_conv",
    "build_dense",
    "callbacks",
    "check_batchnorm",
    "data",
    "distribute",
    "fold_batchnorm",
    "lr_find",
    "nearest_rank_percentiles",
    "optimizers",
    "report",
    "sanity",
    "sanity_check",
    "search",
]
