"""What the training tools share: taking data in one of three forms, getting a compiled model.

Usage::

    x, y, validation = split_data(data)        # a Dataset, (x, y) or (x, y, x_val, y_val)
    model = compiled(model_fn())               # Adam default + sparse cross-entropy if uncompiled
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def split_data(data) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """``(x, y, (x_val, y_val) or None)`` from a `keras_bn.data.Dataset`-like object
    (its ``x_train``/``y_train``; the test split is never used), ``(x, y)`` or
    ``(x, y, x_val, y_val)``."""
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        return np.asarray(data.x_train), np.asarray(data.y_train), None
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        validation = (np.asarray(data[2]), np.asarray(data[3])) if len(data) == 4 else None
        if len(x) != len(y):
            raise ValueError(f"`data` must hold as many labels as samples; got {len(x)} samples and "
                             f"{len(y)} labels. Received: data=<{len(data)}-tuple>")
        return x, y, validation
    raise TypeError(
        "`data` must be a keras_bn.data.Dataset, (x, y) or (x, y, x_val, y_val). "
        f"Received: data={type(data).__name__}"
    )


def holdout(x: np.ndarray, y: np.ndarray, fraction: float = 0.2):
    """``(x_fit, y_fit, (x_val, y_val))``: the last `fraction` of the samples held out."""
    cut = len(x) - max(1, int(round(len(x) * fraction)))
    return x[:cut], y[:cut], (x[cut:], y[cut:])


def compiled(model, optimizer=None):
    """`model` compiled with accuracy as a metric: with its own optimizer and loss if it was
    compiled, else with `optimizer` (default ``keras_bn.optimizers.adam()``) and sparse
    categorical cross-entropy. Meant for models the tools made themselves."""
    if getattr(model, "compiled", False) and model.optimizer is not None:
        optimizer, loss = model.optimizer, model.loss
    else:
        from keras_bn.optimizers import adam

        optimizer, loss = optimizer or adam(), "sparse_categorical_crossentropy"
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def make_model(model_fn: Callable, *args, **kwargs):
    """``model_fn(*args, **kwargs)``, checked to be a Keras model."""
    import keras

    if not callable(model_fn):
        raise TypeError(f"`model_fn` must be a callable returning a keras.Model. Received: model_fn={model_fn!r}")
    model = model_fn(*args, **kwargs)
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model_fn` must return a keras.Model. Received: {type(model).__name__} "
                        f"from model_fn={model_fn!r}")
    return model


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, steps: int, seed: int = 0):
    """`steps` shuffled mini-batches, reshuffling each pass over the data."""
    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=int)
    for _ in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(x))])
        idx, order = order[:batch_size], order[batch_size:]
        yield x[idx], y[idx]
