"""What the training tools share: taking data as `fit` does, getting a compiled model.

The tools (`search`, `sanity`, `lr_find`) accept the data forms ``model.fit`` accepts, plus
keras-bn's own splits:

- ``(x, y)`` or ``(x, y, x_val, y_val)`` NumPy arrays, or a `keras_bn.data.Dataset`-like
  object (its ``x_train``/``y_train``; the test split is never used);
- a ``tf.data.Dataset`` or a ``keras.utils.PyDataset`` of ``(x, y)`` batches;
- a Python generator (or any iterator) of ``(x, y)`` batches (read once, as ``fit`` does).

Usage::

    x, y, validation = split_data(data)          # arrays only
    x, y = take_arrays(tf_dataset, 1000)          # the first 1000 samples of any form
    for xb, yb in stream_batches(data, 64, steps=100): ...
    model = compiled(model_fn())                  # its own compile, or Adam + sparse CE
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import numpy as np

# The forms of `data`, as named in error messages.
DATA_FORMS = ("(x, y)", "(x, y, x_val, y_val)", "a keras_bn.data.Dataset", "a tf.data.Dataset",
              "a keras.utils.PyDataset", "a generator of (x, y) batches")


def data_kind(data) -> str:
    """"arrays" (tuples, keras-bn splits), "tf_dataset", "py_dataset" or "generator"; raises a
    TypeError naming the accepted forms for anything else."""
    import keras

    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        return "arrays"
    if isinstance(data, (tuple, list)):
        return "arrays"
    if isinstance(data, keras.utils.PyDataset):
        return "py_dataset"
    if type(data).__module__.startswith("tensorflow"):
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            return "tf_dataset"
    if inspect.isgenerator(data) or isinstance(data, Iterator):
        return "generator"
    raise TypeError(f"`data` must be one of: {', '.join(DATA_FORMS)}. Received: data={type(data).__name__}")


def split_data(data) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """``(x, y, (x_val, y_val) or None)`` from a `keras_bn.data.Dataset`-like object,
    ``(x, y)`` or ``(x, y, x_val, y_val)``."""
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        return np.asarray(data.x_train), np.asarray(data.y_train), None
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        validation = (np.asarray(data[2]), np.asarray(data[3])) if len(data) == 4 else None
        if len(x) != len(y):
            raise ValueError(f"`data` must hold as many labels as samples; got {len(x)} samples and "
                             f"{len(y)} labels. Received: data=<{len(data)}-tuple>")
        return x, y, validation
    raise TypeError(f"`data` must be one of: {', '.join(DATA_FORMS)}. Received: data={type(data).__name__}")


def _xy(batch, kind: str):
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(f"`data` ({kind}) must yield (x, y) batches (labels are needed). "
                         f"Received a batch of type {type(batch).__name__}")
    return np.asarray(batch[0]), np.asarray(batch[1])


def iterate_batches(data) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass over the ``(x, y)`` batches of a tf.data.Dataset, PyDataset or generator."""
    kind = data_kind(data)
    if kind == "tf_dataset":
        for batch in data.as_numpy_iterator():
            yield _xy(batch, kind)
    elif kind == "py_dataset":
        count = data.num_batches
        i = 0
        while count is None or i < count:
            yield _xy(data[i], kind)
            i += 1
        data.on_epoch_end()
    elif kind == "generator":
        for batch in data:
            yield _xy(batch, kind)
    else:
        raise TypeError(f"iterate_batches takes a Dataset, PyDataset or generator. Received: {kind}")


def take_arrays(data, max_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` NumPy arrays: the training split of array data, or the first `max_samples`
    samples (all when None) of the batches of a Dataset, PyDataset or generator."""
    if data_kind(data) == "arrays":
        x, y, _ = split_data(data)
        return (x, y) if max_samples is None else (x[:max_samples], y[:max_samples])
    xs, ys, n = [], [], 0
    for xb, yb in iterate_batches(data):
        xs.append(xb)
        ys.append(yb)
        n += len(xb)
        if max_samples is not None and n >= max_samples:
            break
    if not xs:
        raise ValueError("`data` yielded no batches.")
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x, y) if max_samples is None else (x[:max_samples], y[:max_samples])


def stream_batches(data, batch_size: int, steps: int, seed: int = 0):
    """`steps` mini-batches: shuffled ones of `batch_size` from array data (reshuffled each
    pass), or the batches of a Dataset / PyDataset in order, passing over it again as often as
    needed. A generator is read once; raises a ValueError when it ends before `steps`."""
    if data_kind(data) == "arrays":
        x, y, _ = split_data(data)
        yield from batches(x, y, batch_size, steps, seed)
        return
    done = 0
    repeatable = data_kind(data) != "generator"
    while done < steps:
        before = done
        for batch in iterate_batches(data):
            yield batch
            done += 1
            if done == steps:
                return
        if not repeatable or done == before:
            raise ValueError(f"`data` ended after {done} batches; {steps} steps were asked for. Pass a "
                             f"repeating dataset (`.repeat()`) or fewer `steps`. Received: steps={steps}")


def holdout(x: np.ndarray, y: np.ndarray, fraction: float = 0.2):
    """``(x_fit, y_fit, (x_val, y_val))``: the last `fraction` of the samples held out."""
    cut = len(x) - max(1, int(round(len(x) * fraction)))
    return x[:cut], y[:cut], (x[cut:], y[cut:])


def is_compiled(model) -> bool:
    return bool(getattr(model, "compiled", False)) and model.optimizer is not None


def compiled(model, optimizer=None, loss=None):
    """`model` as it is when it was compiled (its optimizer, loss and metrics are kept, never
    recompiled), else compiled with `optimizer` (default ``keras_bn.optimizers.adam()``) and
    `loss`, by default sparse categorical cross-entropy with accuracy as a metric."""
    if is_compiled(model):
        return model
    from keras_bn.optimizers import adam

    metrics = ["accuracy"] if loss is None else []
    model.compile(optimizer=optimizer or adam(), loss=loss or "sparse_categorical_crossentropy", metrics=metrics)
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
