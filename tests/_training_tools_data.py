"""The standardized embedded Fashion-MNIST subset, flattened, loaded once for the training-tool tests."""

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def small_data():
    """``(x, y)``: 6000 standardized 784-vectors and int32 labels (fashion_mnist_small)."""
    from keras_bn import data

    ds = data.load("fashion_mnist_small", verbose=False)
    (x,) = data.standardize(ds.x_train, flatten=True)
    return x, ds.y_train.astype(np.int32)


def mlp(**kwargs):
    """The reference MLP 784-32-32-10 (BN by default)."""
    import keras_bn

    return keras_bn.build_dense((784,), [32, 32], 10, **kwargs)
