"""MNIST and Fashion-MNIST with or without internet, and the preprocessing of SEEDS §3.

`load(name)` looks, in order, in:

1. `data_dir` (the four standard IDX ``.gz`` files; an error if they are not there),
2. ``$KERAS_BN_DATA_DIR`` (the files directly, or in a ``<name>`` sub-folder),
3. ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist`` package),
4. Keras' download cache (``$KERAS_HOME`` or ``~/.keras``, then ``/tmp/.keras``:
   ``datasets/fashion-mnist/`` or ``datasets/mnist.npz``), read without Keras,
5. Keras' own loader, a download, tried only when its server answers within 3 s (so an
   offline machine prints no "Downloading data from ..." line and never hangs),
6. ``fashion_mnist_small``: 6,000 training and 1,000 test images of Fashion-MNIST (balanced,
   600 / 100 per class) that ship inside keras-bn, made by ``scripts/make_small_subset.py``
   (MIT licence, Zalando SE; see ``keras_bn/datasets/fashion_mnist_small/LICENSE``).

It prints one line naming what it loaded and from where. A damaged file (not gzip, cut
short, a bad IDX header, labels out of range, image and label counts that differ) is a
one-line ``ValueError`` naming the file and what is wrong.

Usage::

    data = keras_bn.data.load("fashion_mnist")
    x_train, x_test = keras_bn.data.standardize(data.x_train, data.x_test, flatten=True)
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import threading
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from keras_bn._registry import Registry

__all__ = ["CLASS_NAMES", "DATASETS", "Dataset", "load", "read_idx", "standardize"]

ENV_VAR = "KERAS_BN_DATA_DIR"
DOWNLOAD_HOST = ("storage.googleapis.com", 443)  # where keras.datasets downloads from
PROBE_SECONDS = 3.0
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

    Raises a one-line ValueError naming `path` when it is not gzip (for ``.gz``), is cut
    short, or its header is not IDX.

    Example::

        labels = read_idx("t10k-labels-idx1-ubyte.gz")  # shape (10000,), uint8
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except gzip.BadGzipFile:
        raise ValueError(f"{path} is not a gzip file (its name ends in .gz); re-download it.") from None
    except (EOFError, zlib.error) as err:
        raise ValueError(f"{path} is a truncated or damaged gzip file ({err}); re-download it.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{dtype_code:02x}.")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: bad IDX header: {ndim} dimensions, {len(data)} bytes in all.")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    itemsize = np.dtype(dtypes[dtype_code]).itemsize
    found, expected = (len(data) - 4 - 4 * ndim) // itemsize, int(np.prod(shape, dtype=np.int64))
    if found != expected:
        state = "truncated" if found < expected else "longer than its header says"
        raise ValueError(f"{path} is {state}: header says shape {shape} ({expected} values), found {found}.")
    array = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    return array.reshape(shape).astype(np.dtype(dtypes[dtype_code]).newbyteorder("="))


def _checked(x: np.ndarray, y: np.ndarray, x_file, y_file, name: str) -> None:
    """Images (N, H, W), labels (N,) in [0, classes): else a ValueError naming the files."""
    if x.ndim != 3:
        raise ValueError(f"{x_file}: images must be (count, height, width); found shape {x.shape}.")
    if y.ndim != 1:
        raise ValueError(f"{y_file}: labels must be one-dimensional; found shape {y.shape}.")
    if len(x) != len(y):
        raise ValueError(f"{x_file} holds {len(x)} images but {y_file} holds {len(y)} labels; "
                         "they must be the same count.")
    classes = len(CLASS_NAMES[name])
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        raise ValueError(f"{y_file}: labels must be in [0, {classes - 1}] for {name}; found {y[bad[0]]} "
                         f"at index {bad[0]} ({bad.size} out of range).")


def _has_idx_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in IDX_FILES.values())


def _read_folder(folder: Path, name: str, source: str) -> Dataset:
    arrays = {key: read_idx(folder / f) for key, f in IDX_FILES.items()}
    for split in ("train", "test"):
        _checked(arrays[f"x_{split}"], arrays[f"y_{split}"], folder / IDX_FILES[f"x_{split}"],
                 folder / IDX_FILES[f"y_{split}"], name)
    return Dataset(**arrays, name=name, source=source)


def _keras_cache_dirs() -> list[Path]:
    """Where ``keras.utils.get_file`` keeps downloads, in the order it picks them."""
    homes = [os.environ["KERAS_HOME"]] if "KERAS_HOME" in os.environ else [os.path.join(os.path.expanduser("~"), ".keras")]
    homes.append("/tmp/.keras")  # Keras' fallback when the home folder is not writable
    return [Path(home) / "datasets" for home in homes]


def _from_keras_cache(name: str) -> Dataset | None:
    for cache in _keras_cache_dirs():
        if name == "fashion_mnist" and _has_idx_files(cache / "fashion-mnist"):
            return _read_folder(cache / "fashion-mnist", name, f"{cache / 'fashion-mnist'} (Keras cache)")
        if name == "mnist" and (cache / "mnist.npz").is_file():
            path = cache / "mnist.npz"
            try:
                with np.load(path, allow_pickle=False) as f:
                    arrays = {key: f[key] for key in IDX_FILES}
            except (OSError, KeyError, ValueError, zlib.error) as err:
                raise ValueError(f"{path} is not a readable mnist.npz ({err}); delete it to download again.") from None
            for split in ("train", "test"):
                _checked(arrays[f"x_{split}"], arrays[f"y_{split}"], path, path, name)
            return Dataset(**arrays, name=name, source=f"{path} (Keras cache)")
    return None


def _download_host_answers(address=DOWNLOAD_HOST, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to `address` opens within `timeout` seconds, name lookup
    included (in a daemon thread, so a hanging DNS cannot block the caller)."""
    answered = []

    def probe():
        try:
            socket.create_connection(address, timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True, name="keras_bn-download-probe")
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _from_keras(name: str) -> Dataset:
    import keras

    loader = getattr(keras.datasets, DATASETS.get(name))
    (x_train, y_train), (x_test, y_test) = loader.load_data()
    _checked(x_train, y_train, f"keras.datasets.{name} (train)", f"keras.datasets.{name} (train)", name)
    _checked(x_test, y_test, f"keras.datasets.{name} (test)", f"keras.datasets.{name} (test)", name)
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
            dataset = _from_keras_cache(name)
            if dataset is None:
                tried.append("the Keras download cache")
        if dataset is None:
            if not _download_host_answers():
                tried.append(f"a download ({DOWNLOAD_HOST[0]} did not answer within {PROBE_SECONDS:.0f} s)")
            else:
                try:
                    dataset = _from_keras(name)
                except Exception as err:  # noqa: BLE001  (keras raises a bare Exception on a failed download)
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

    The arithmetic of a ``keras.layers.Normalization`` adapted on `x_train` (population
    variance, ``std`` floored at Keras' epsilon), in NumPy: adapting the layer builds a
    tf.data pipeline, about 0.3 s for what NumPy does in milliseconds. The same layer can go
    inside a model instead. `per_channel` keeps one mean/std per last-axis channel; by default
    one scalar mean/std, the usual choice for grey images. `flatten` reshapes images to
    (N, H*W*C) first.

    Returns:
        A tuple of float32 arrays, `x_train` first, then `others` in order.

    Example::

        x_train, x_test = standardize(data.x_train, data.x_test, flatten=True)
    """
    arrays = [np.asarray(x, dtype=np.float32) for x in (x_train, *others)]
    if flatten:
        arrays = [a.reshape(len(a), -1) for a in arrays]
    axes = tuple(range(arrays[0].ndim - 1)) if per_channel else None
    train = arrays[0].astype(np.float64)
    mean = train.mean(axis=axes)
    std = np.maximum(np.sqrt(train.var(axis=axes)), 1e-7)  # keras.config.epsilon(), as Normalization
    return tuple(((a - mean) / std).astype(np.float32) for a in arrays)
