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


def test_falls_back_to_embedded_subset_when_nothing_is_reachable(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path)

    def offline(name):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(data, "_from_keras", offline)
    ds = data.load("mnist")
    assert ds.name == "fashion_mnist_small" and len(ds.x_train) == 6000
    assert "fashion_mnist_small from embedded in keras-bn; mnist was not reachable" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="Could not load 'mnist'; tried: .*keras.datasets.mnist"):
        data.load("mnist", fallback=False)


def test_keras_loader_is_used_when_it_works(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path)
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
