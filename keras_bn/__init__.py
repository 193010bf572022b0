"""keras-bn: see why a deep Keras network will not train.

Builders with normalization placed before the activation, diagnostics callbacks for
TensorBoard, Adam clipping presets, BN folding and the classic experiments as recipes.

Names are imported on first use (PEP 562), so ``import keras_bn`` and the ``keras-bn``
command stay fast and do not load TensorFlow until a model, callback or data set needs it.

Usage::

    import keras_bn
    model = keras_bn.build_dense((784,), [32, 32], 10)
"""

import importlib

from keras_bn import _backend  # noqa: F401  (cheap: says which command installs a backend)

__version__ = "0.1.0"

# public name -> the module that defines it (a submodule when the name is the module itself)
_LAZY = {
    "BatchNormCheck": "keras_bn.folding",
    "BatchNormRow": "keras_bn.folding",
    "ConvBlock": "keras_bn.layers",
    "DenseBlock": "keras_bn.layers",
    "FoldReport": "keras_bn.folding",
    "LossGuard": "keras_bn.sanity",
    "Maxout": "keras_bn.activations",
    "build_conv": "keras_bn.builders",
    "build_dense": "keras_bn.builders",
    "check_batchnorm": "keras_bn.folding",
    "fold_batchnorm": "keras_bn.folding",
    "sanity_check": "keras_bn.sanity",
    "callbacks": "keras_bn.callbacks",
    "data": "keras_bn.data",
    "distribute": "keras_bn.distribute",
    "lr_find": "keras_bn.lr_find",
    "optimizers": "keras_bn.optimizers",
    "report": "keras_bn.report",
    "sanity": "keras_bn.sanity",
    "search": "keras_bn.search",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'keras_bn' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"keras_bn.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])
