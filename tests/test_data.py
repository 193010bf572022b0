import gzip
import struct

import numpy as np
import pytest

from keras_bn import data


def test_idx_reader_shapes_dtypes_and_label_range(fashion_mnist_dir):
    x = data.read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")
    y = data.read_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert (y.min(), y.max()) == (0, 9)
    assert np.bincount(y).tolist() == [1000] * 10


def test_idx_reader_round_trip_and_errors(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2, 3, 4) + array.tobytes())
    np.testing.assert_array_equal(data.read_idx(path), array)
    truncated = tmp_path / "b.gz"
    with gzip.open(truncated, "wb") as f:
        f.write(struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2, 3, 5) + array.tobytes())
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(truncated)
    bad = tmp_path / "c"
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(bad)


def test_load_from_data_dir(fashion_mnist_dir, capsys):
    ds = data.load("fashion_mnist", data_dir=fashion_mnist_dir)
    assert ds.x_train.shape == (60000, 28, 28) and ds.y_test.shape == (10000,)
    assert ds.num_classes == 10
    assert f"loaded fashion_mnist from {fashion_mnist_dir}" in capsys.readouterr().out


def test_load_from_environment_variable(fashion_mnist_dir, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(fashion_mnist_dir))
    assert data.load("fashion_mnist", verbose=False).source.endswith(f"(${data.ENV_VAR})")


def test_embedded_subset_is_balanced():
    ds = data.load("fashion_mnist_small", verbose=False)
    assert ds.x_train.shape == (6000, 28, 28) and ds.x_test.shape == (1000, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [600] * 10
    assert np.bincount(ds.y_test).tolist() == [100] * 10


@pytest.fixture
def no_local_copies(monkeypatch, tmp_path):
    """No $KERAS_BN_DATA_DIR, system folder or Keras cache: only a download or the subset."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(data, "_keras_cache_dirs", lambda: [tmp_path / "keras" / "datasets"])
    monkeypatch.setattr(data, "_download_host_answers", lambda: True)
    return tmp_path / "keras" / "datasets"


def test_falls_back_to_embedded_subset_when_nothing_is_reachable(no_local_copies, monkeypatch, capsys):

    def offline(name):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(data, "_from_keras", offline)
    ds = data.load("mnist")
    assert ds.name == "fashion_mnist_small" and len(ds.x_train) == 6000
    assert "fashion_mnist_small from embedded in keras-bn; mnist was not reachable" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="Could not load 'mnist'; tried: .*keras.datasets.mnist"):
        data.load("mnist", fallback=False)


def test_keras_loader_is_used_when_it_works(no_local_copies, monkeypatch):
    fake = np.zeros((3, 28, 28), np.uint8), np.array([0, 1, 2], np.uint8)

    class FakeLoader:
        @staticmethod
        def load_data():
            return fake, fake

    import keras

    monkeypatch.setattr(keras.datasets, "mnist", FakeLoader)
    assert data.load("mnist", verbose=False).source == "keras.datasets"


def test_bad_name_and_missing_data_dir(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown `name`: 'fashon_mnist'.*Did you mean 'fashion_mnist'"):
        data.load("fashon_mnist")
    with pytest.raises(FileNotFoundError, match=r"missing in .*train-images-idx3-ubyte.gz"):
        data.load("mnist", data_dir=tmp_path)


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(500, 4, 4), dtype=np.uint8)
    x_test = rng.integers(0, 128, size=(100, 4, 4), dtype=np.uint8)
    train, test = data.standardize(x_train, x_test, flatten=True)
    assert train.shape == (500, 16) and train.dtype == np.float32
    assert abs(train.mean()) < 1e-4 and abs(train.std() - 1) < 1e-3
    expected = (x_test.astype(np.float64) - x_train.mean()) / x_train.std()
    np.testing.assert_allclose(test, expected.reshape(100, 16), atol=1e-3)


@pytest.mark.parametrize("per_channel", [False, True])
def test_standardize_is_what_an_adapted_keras_normalization_gives(per_channel):
    import keras

    rng = np.random.default_rng(1)
    x_train = rng.normal(3.0, [1.0, 5.0, 0.5], size=(300, 6, 3)).astype("float32")
    x_test = rng.normal(1.0, 2.0, size=(40, 6, 3)).astype("float32")
    layer = keras.layers.Normalization(axis=-1 if per_channel else None)
    layer.adapt(x_train)
    train, test = data.standardize(x_train, x_test, per_channel=per_channel)
    np.testing.assert_allclose(train, keras.ops.convert_to_numpy(layer(x_train)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(test, keras.ops.convert_to_numpy(layer(x_test)), rtol=1e-4, atol=1e-5)
    constant = data.standardize(np.ones((10, 2), "float32"))[0]
    assert np.all(np.isfinite(constant)) and np.all(constant == 0)  # std floored, as Keras does


def _write_idx(path, array, *, dtype_code=0x08):
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, dtype_code, array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _write_dataset(folder, *, train_images=6, train_labels=None, test_labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    _write_idx(folder / data.IDX_FILES["x_train"], np.zeros((train_images, 28, 28), np.uint8))
    _write_idx(folder / data.IDX_FILES["y_train"], np.asarray(train_labels if train_labels is not None else [0, 1, 2, 3, 4, 5], np.uint8))
    _write_idx(folder / data.IDX_FILES["x_test"], np.zeros((2, 28, 28), np.uint8))
    _write_idx(folder / data.IDX_FILES["y_test"], np.asarray(test_labels if test_labels is not None else [8, 9], np.uint8))
    return folder


def test_keras_cache_is_read_without_a_download(no_local_copies, monkeypatch, capsys):
    def no_download(name):
        raise AssertionError("keras.datasets was asked to download although the cache holds the files")

    monkeypatch.setattr(data, "_from_keras", no_download)
    _write_dataset(no_local_copies / "fashion-mnist")
    ds = data.load("fashion_mnist")
    assert ds.source.endswith("(Keras cache)") and ds.y_train.tolist() == [0, 1, 2, 3, 4, 5]
    arrays = {"x_train": np.ones((3, 28, 28), np.uint8), "y_train": np.array([0, 1, 9], np.uint8),
              "x_test": np.ones((1, 28, 28), np.uint8), "y_test": np.array([7], np.uint8)}
    np.savez(no_local_copies / "mnist.npz", **arrays)
    ds = data.load("mnist", verbose=False)
    assert ds.source == f"{no_local_copies / 'mnist.npz'} (Keras cache)" and ds.y_test.tolist() == [7]
    assert "Downloading" not in capsys.readouterr().out


def test_offline_machine_skips_the_download(no_local_copies, monkeypatch, capsys):
    monkeypatch.setattr(data, "_download_host_answers", lambda: False)
    monkeypatch.setattr(data, "_from_keras", lambda name: pytest.fail("a download was tried while offline"))
    ds = data.load("fashion_mnist")
    assert ds.name == "fashion_mnist_small"
    with pytest.raises(FileNotFoundError, match="did not answer within 3 s"):
        data.load("fashion_mnist", fallback=False)


def test_download_probe_is_bounded_by_its_timeout():
    import socket

    with socket.socket() as server:  # a listening socket that accepts: the probe succeeds
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert data._download_host_answers(server.getsockname(), timeout=2.0)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = closed.getsockname()  # bound, not listening: connection refused at once
        assert not data._download_host_answers(address, timeout=2.0)


@pytest.mark.parametrize("case, message", [
    ("label_out_of_range", r"train-labels-idx1-ubyte.gz: labels must be in \[0, 9\] for fashion_mnist; found 200 at index 2"),
    ("count_mismatch", r"train-images-idx3-ubyte.gz holds 7 images but .*train-labels-idx1-ubyte.gz holds 6 labels"),
    ("not_gzip", r"t10k-images-idx3-ubyte.gz is not a gzip file"),
    ("truncated_gzip", r"t10k-images-idx3-ubyte.gz is a truncated or damaged gzip file"),
    ("bad_header", r"t10k-labels-idx1-ubyte.gz: bad IDX header: 3 dimensions, 8 bytes in all"),
    ("bad_magic", r"t10k-labels-idx1-ubyte.gz is not an IDX file"),
])
def test_damaged_files_name_the_file_and_the_fault(tmp_path, case, message):
    folder = tmp_path / "d"
    if case == "label_out_of_range":
        _write_dataset(folder, train_labels=[0, 1, 200, 3, 4, 5])
    elif case == "count_mismatch":
        _write_dataset(folder, train_images=7)
    else:
        _write_dataset(folder)
    images, labels = folder / data.IDX_FILES["x_test"], folder / data.IDX_FILES["y_test"]
    if case == "not_gzip":
        images.write_bytes(b"plain text, not gzip")
    elif case == "truncated_gzip":
        images.write_bytes(images.read_bytes()[:40])
    elif case == "bad_header":
        with gzip.open(labels, "wb") as f:
            f.write(struct.pack(">BBBBI", 0, 0, 0x08, 3, 2))
    elif case == "bad_magic":
        with gzip.open(labels, "wb") as f:
            f.write(b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(ValueError, match=message) as info:
        data.load("fashion_mnist", data_dir=folder, verbose=False)
    assert "\n" not in str(info.value)
