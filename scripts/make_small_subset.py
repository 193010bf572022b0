"""Make keras_bn/datasets/fashion_mnist_small from the full Fashion-MNIST IDX files.

Takes the first 600 training and 100 test images of each class (in file order), writes them
as the four standard IDX .gz files and copies the licence.

Usage::

    python scripts/make_small_subset.py ../shared/data/fashion-mnist
"""

import argparse
import gzip
import shutil
import struct
from pathlib import Path

import numpy as np

from keras_bn.data import IDX_FILES, read_idx

OUT = Path(__file__).resolve().parent.parent / "keras_bn" / "datasets" / "fashion_mnist_small"
PER_CLASS = {"train": 600, "test": 100}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0: the same bytes every run
        f.write(header + array.astype(np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the full IDX .gz files")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x = read_idx(args.source / IDX_FILES[f"x_{split}"])
        y = read_idx(args.source / IDX_FILES[f"y_{split}"])
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[: PER_CLASS[split]] for c in range(10)]))
        write_idx(OUT / IDX_FILES[f"x_{split}"], x[keep])
        write_idx(OUT / IDX_FILES[f"y_{split}"], y[keep])
        print(f"{split}: {len(keep)} images")
    shutil.copy(args.source / "LICENSE", OUT / "LICENSE")


if __name__ == "__main__":
    main()
