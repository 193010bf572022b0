"""MNIST and Fashion-MNIST with or without internet, and the preprocessing of SEEDS §3.

`load(name)` looks, in order, in:

1. `data_dir` (the four standard IDX ``.gz`` files; an error if they are not there),
2. ``$KERAS_BN_DATA_DIR`` (the files directly, or in a ``<name>`` sub-folder),
3. ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist`` package),
4. Keras' own loader (its cache in ``~/.keras/datasets``, else a download),
5. ``fashion_mnist_small``: 6,000 training and 1,000 test images of Fashion-MNIST (balanced,
   600 / 100 per class) that ship inside keras-bn, made by ``scripts/make_small_subset.py``
   (MIT licence, Zalando SE; see ``keras_bn/datasets/fashion_mnist_small/LICENSE``).

It prints one line naming what it loaded and from where.

Usage::

    data = keras_bn.data.load("fashion_mnist")
    x_train, x_test = keras_bn.data.standardize(data.x_train, data.x_test, flatten=True)
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from keras_bn._registry import Registry

ENV_VAR = "KERAS_BN_DATA_DIR"
SYSTEM_DIR = Path("/usr/share/datasets")
EMBEDDED_DIR = Path(__file__).parent / "datasets"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# name -> keras.datasets module name (None: only shipped inside keras-bn)
DATASETS: Registry[str | None] = Registry(
    "name",
    {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "fashion_mnist_small": None},
    aliases={"fashion": "fashion_mnist", "fmnist": "fashion_mnist"},
)
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
CLASS_NAMES["fashion_mnist_small"] = CLASS_NAMES["fashion_mnist"]


class Dataset(NamedTuple):
    """Images (N, 28, 28) uint8 and labels (N,) uint8, with what was loaded and from where."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    source: str

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a numpy array of its stored shape.

    Example::

        labels = read_idx("t10k-labels-idx1-ubyte.gz")  # shape (10000,), uint8
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{dtype_code:02x}.")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} values.")
    return array.reshape(shape).astype(np.dtype(dtypes[dtype_code]).newbyteorder("="))


def _has_idx_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in IDX_FILES.values())


def _read_folder(folder: Path, name: str, source: str) -> Dataset:
    arrays = {key: read_idx(folder / f) for key, f in IDX_FILES.items()}
    return Dataset(**arrays, name=name, source=source)


def _from_keras(name: str) -> Dataset:
    import keras

    loader = getattr(keras.datasets, DATASETS.get(name))
    (x_train, y_train), (x_test, y_test) = loader.load_data()
    return Dataset(x_train, y_train, x_test, y_test, name=name, source="keras.datasets")


def _candidate_dirs(name: str) -> list[tuple[Path, str]]:
    dirs = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += [(Path(env) / name, f"${ENV_VAR}"), (Path(env), f"${ENV_VAR}")]
    dirs.append((SYSTEM_DIR / name.replace("_", "-"), "system"))
    return dirs


def load(
    name: str = "fashion_mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    fallback: bool = True,
    verbose: bool = True,
) -> Dataset:
    """Load `name` ("mnist", "fashion_mnist" or "fashion_mnist_small"); see the module docstring.

    Args:
        name: the data set.
        data_dir: a folder holding the four IDX ``.gz`` files; tried first, and an error
            when they are missing there.
        fallback: fall back to the embedded ``fashion_mnist_small`` when nothing else is
            reachable (False: raise instead).
        verbose: print the line that names what was loaded.

    Example::

        data = load("fashion_mnist", data_dir="../shared/data/fashion-mnist")
    """
    name = DATASETS.canonical(name)
    tried = []
    dataset = None
    if data_dir is not None:
        folder = Path(data_dir)
        if not _has_idx_files(folder):
            missing = [f for f in IDX_FILES.values() if not (folder / f).is_file()]
            raise FileNotFoundError(
                f"`data_dir` must hold the four IDX files of {name}; missing in {folder}: "
                f"{', '.join(missing)}. Received: data_dir={str(data_dir)!r}"
            )
        dataset = _read_folder(folder, name, str(folder))
    elif name == "fashion_mnist_small":
        dataset = _read_folder(EMBEDDED_DIR / name, name, "embedded in keras-bn")
    else:
        for folder, label in _candidate_dirs(name):
            if _has_idx_files(folder):
                dataset = _read_folder(folder, name, f"{folder} ({label})")
                break
            tried.append(str(folder))
        if dataset is None:
            try:
                dataset = _from_keras(name)
            except Exception as err:  # no network, no cache: keras raises a bare Exception
                tried.append(f"keras.datasets.{name} ({type(err).__name__}: {str(err)[:80]})")
        if dataset is None:
            if not fallback:
                raise FileNotFoundError(f"Could not load {name!r}; tried: {'; '.join(tried)}.")
            dataset = _read_folder(EMBEDDED_DIR / "fashion_mnist_small", "fashion_mnist_small",
                                   f"embedded in keras-bn; {name} was not reachable")
    if verbose:
        print(
            f"keras-bn: loaded {dataset.name} from {dataset.source}: "
            f"{len(dataset.x_train)} train / {len(dataset.x_test)} test images"
        )
    return dataset


def standardize(x_train: np.ndarray, *others: np.ndarray, flatten: bool = False, per_channel: bool = False):
    """Zero-centre and scale to unit variance with the training set's statistics (SEEDS §3).

    A ``keras.layers.Normalization`` adapted on `x_train` does the work (the same layer can
    go inside a model instead). `per_channel` keeps one mean/std per last-axis channel; by
    default one scalar mean/std, the usual choice for grey images. `flatten` reshapes
    images to (N, H*W*C) first.

    Returns:
        A tuple of float32 arrays, `x_train` first, then `others` in order.

    Example::

        x_train, x_test = standardize(data.x_train, data.x_test, flatten=True)
    """
    import keras

    arrays = [np.asarray(x, dtype=np.float32) for x in (x_train, *others)]
    if flatten:
        arrays = [a.reshape(len(a), -1) for a in arrays]
    layer = keras.layers.Normalization(axis=-1 if per_channel else None)
    layer.adapt(arrays[0])
    return tuple(np.asarray(layer(a), dtype=np.float32) for a in arrays)
