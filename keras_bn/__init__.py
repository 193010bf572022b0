"""keras-bn: see why a deep Keras network will not train.

Builders with normalization placed before the activation, diagnostics callbacks for
TensorBoard, the training doctor, Adam clipping presets, BN folding and the classic experiments
as recipes.

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
    "BatchNormReport": "keras_bn.bn_stats",
    "BatchNormRow": "keras_bn.bn_stats",
    "BlockOptions": "keras_bn.block_options",
    "ConvBlock": "keras_bn.layers",
    "DenseBlock": "keras_bn.layers",
    "FoldReport": "keras_bn.folding",
    "LayerNormGRU": "keras_bn.recurrent",
    "LayerNormGRUCell": "keras_bn.recurrent_cells",
    "LayerNormLSTM": "keras_bn.recurrent",
    "LayerNormLSTMCell": "keras_bn.recurrent_cells",
    "LayerNormSimpleRNN": "keras_bn.recurrent",
    "LayerNormSimpleRNNCell": "keras_bn.recurrent_cells",
    "LossGuard": "keras_bn.sanity",
    "Maxout": "keras_bn.activations",
    "ScalarBias": "keras_bn.residual_layers",
    "ScalarScale": "keras_bn.residual_layers",
    "ZeroPadShortcut": "keras_bn.residual_layers",
    "activation_statistics": "keras_bn.callbacks._reductions",
    "build_conv": "keras_bn.builders",
    "build_dense": "keras_bn.builders",
    "build_recurrent": "keras_bn.recurrent",
    "build_resnet": "keras_bn.resnet",
    "check_batchnorm": "keras_bn.bn_stats",
    "fold_batchnorm": "keras_bn.folding",
    "nearest_rank_percentiles": "keras_bn.callbacks._reductions",
    "recompute_batchnorm_statistics": "keras_bn.precise_bn",
    "sanity_check": "keras_bn.sanity",
    # submodules
    "bn_stats": "keras_bn.bn_stats",
    "callbacks": "keras_bn.callbacks",
    "data": "keras_bn.data",
    "distribute": "keras_bn.distribute",
    "doctor": "keras_bn.doctor",
    "events": "keras_bn.events",
    "lr_find": "keras_bn.lr_find",
    "optimizers": "keras_bn.optimizers",
    "precise_bn": "keras_bn.precise_bn",
    "recurrent": "keras_bn.recurrent",
    "report": "keras_bn.report",
    "sanity": "keras_bn.sanity",
    "search": "keras_bn.search",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name):
    if name == "BatchNormCheck":  # the old name of BatchNormReport
        from keras_bn import _warnings

        _warnings.warn("keras_bn.BatchNormCheck was renamed keras_bn.BatchNormReport (the callback "
                       "keras_bn.callbacks.BatchNormCheck keeps its name).", DeprecationWarning)
        return __getattr__("BatchNormReport")
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'keras_bn' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"keras_bn.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])
