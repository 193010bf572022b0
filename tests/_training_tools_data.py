"""The training-tool tests' data: the standardized embedded Fashion-MNIST subset (flattened,
loaded once), the reference MLP and the forms of data ``fit`` takes."""

import functools

import numpy as np
import pytest


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


def data_forms(x, y, batch) -> dict:
    """``{kind: () -> data}`` for the non-array forms ``fit`` takes, in batches of `batch`:
    "tf_dataset", "py_dataset" (a ``keras.utils.PyDataset``) and "generator" (read once)."""
    import keras

    def tf_dataset():
        tf = pytest.importorskip("tensorflow", reason="the tf.data form needs TensorFlow installed")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return len(x) // batch

        def __getitem__(self, i):
            return x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]

    return {
        "tf_dataset": tf_dataset,
        "py_dataset": Batches,
        "generator": lambda: ((x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)),
    }
