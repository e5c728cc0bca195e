"""IDX parsing on tiny synthetic files, and the real Fashion-MNIST from the Debian package."""

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from ravis.data import MissingDataError, Splits, load_dataset, load_fashion_mnist
from ravis.data.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, FILES, parse_idx, read_idx_gz

HAVE_FMNIST = all((Path(DEFAULT_ROOT) / n).is_file() for pair in FILES.values() for n in pair)
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist "
                                  "not installed")


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def _write_fake_fmnist(root: Path, n_train=5, n_test=3) -> dict:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, arr in zip(FILES[split], (images, labels)):
            (root / name).write_bytes(gzip.compress(_idx_bytes(arr)))
        arrays[split] = (images, labels)
    return arrays


def test_parse_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx_gz(path), arr)
    big_endian = np.array([1, -2, 70000], dtype=">i4")
    out = parse_idx(_idx_bytes(big_endian))
    assert out.dtype == np.int32 and out.tolist() == [1, -2, 70000]


def test_parse_idx_errors(tmp_path):
    good = _idx_bytes(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x00\x00\x77\x01" + good[4:], "f.idx")
    with pytest.raises(ValueError, match="f.idx.*bytes"):
        parse_idx(good[:-1], "f.idx")
    bad_gz = tmp_path / "corrupt.gz"
    bad_gz.write_bytes(gzip.compress(good)[:-9] + b"garbage!!")
    with pytest.raises(ValueError, match=re.escape(str(bad_gz))):
        read_idx_gz(bad_gz)
    not_gz = tmp_path / "plain.gz"
    not_gz.write_bytes(good)
    with pytest.raises(ValueError, match=re.escape(str(not_gz))):
        read_idx_gz(not_gz)


def test_load_synthetic_folder(tmp_path):
    arrays = _write_fake_fmnist(tmp_path)
    splits = load_fashion_mnist(tmp_path)
    assert isinstance(splits, Splits)
    assert len(splits.train) == 5 and len(splits.test) == 3
    assert splits.train.ids[4] == "fashion-mnist/train/4"
    assert splits.test.ids[0] == "fashion-mnist/test/0"
    assert splits.train.class_names == CLASS_NAMES
    assert splits.test.captions == [None] * 3
    np.testing.assert_array_equal(splits.test.labels, arrays["test"][1])
    im = splits.train.load_image(2)
    assert im.mode == "L" and im.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(im), arrays["train"][0][2])
    assert splits.train.fingerprint != splits.test.fingerprint
    assert load_fashion_mnist(tmp_path).train.fingerprint == splits.train.fingerprint


def test_corrupt_file_named(tmp_path):
    _write_fake_fmnist(tmp_path)
    labels = tmp_path / FILES["test"][1]
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 99) + b"\x00"))
    with pytest.raises(ValueError, match=re.escape(str(labels))):
        load_fashion_mnist(tmp_path)


def test_missing_folder_mentions_debian_package(tmp_path):
    with pytest.raises(MissingDataError, match="dataset-fashion-mnist") as e:
        load_fashion_mnist(tmp_path / "absent")
    assert "train-images-idx3-ubyte.gz" in str(e.value)
    _write_fake_fmnist(tmp_path)
    (tmp_path / FILES["test"][0]).unlink()
    with pytest.raises(MissingDataError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path)


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist()


@needs_fmnist
def test_real_fashion_mnist(fmnist):
    assert len(fmnist.train) == 60000 and len(fmnist.test) == 10000
    for split in (fmnist.train, fmnist.test):
        assert split.labels.min() == 0 and split.labels.max() == 9
        assert (split.class_counts() == len(split) // 10).all()  # balanced
    im = fmnist.test.load_image(9999)
    assert im.mode == "L" and im.size == (28, 28)
    assert fmnist.train.text_of(0) == f"a photo of a {CLASS_NAMES[fmnist.train.labels[0]]}"


@needs_fmnist
def test_load_dataset_spec(fmnist):
    splits = load_dataset("fashion-mnist")
    assert splits.train.fingerprint == fmnist.train.fingerprint
