"""Fashion-MNIST from its four gzipped IDX files, parsed with numpy alone.

The Debian package ``dataset-fashion-mnist`` installs the files under
``/usr/share/datasets/fashion-mnist``; any folder holding the same four files works.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import stable_hash
from .dataset import ImageDataset, MissingDataError, Splits

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type codes (third byte of the magic number); multi-byte values are big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decodes one uncompressed IDX file (the MNIST format) into an array.

    Args:
        data: the file's bytes.
        name: what to call the file in error messages.

    Raises:
        ValueError: wrong magic number, unknown type code, or a size that disagrees with
            the header; the message names the file.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise InputError(f"{name}: not an IDX file (magic number {data[:4].hex() or 'missing'})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{name}: IDX header cut short ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise InputError(f"{name}: IDX header says shape {shape} ({expected} bytes) "
                         f"but the file has {len(data)} bytes")
    arr = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx_gz(path: Path | str) -> np.ndarray:
    """Reads one gzipped IDX file; a corrupt archive or header raises ValueError naming it."""
    return parse_idx(_gunzip(Path(path).read_bytes(), path), str(path))


def _gunzip(raw: bytes, path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise InputError(f"{path}: corrupt gzip file ({e})") from e


def load_fashion_mnist(root: Path | str = DEFAULT_ROOT) -> Splits:
    """The 60,000 training and 10,000 test images (28x28 grey, mode "L") with their labels.

    Item ids are ``fashion-mnist/<split>/<index>``; there are no captions, so text encoders
    see the label prompt. The fingerprint of each split hashes its two files' bytes.

    Raises:
        MissingDataError: the folder or one of the four files is missing.
        ValueError: a file is corrupt (bad gzip, wrong magic number, sizes that disagree).
    """
    root = Path(root)
    names = [n for pair in FILES.values() for n in pair]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise MissingDataError(
            f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): install the "
            f"Debian package {DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE}) or pass the "
            f"folder that holds {', '.join(names)}")
    return Splits(train=_load_split(root, "train"), test=_load_split(root, "test"))


def _load_split(root: Path, split: str) -> ImageDataset:
    files = [root / n for n in FILES[split]]
    stats = tuple((st.st_size, st.st_mtime_ns, st.st_ino) for st in (f.stat() for f in files))
    return _parsed_split(root.resolve(), split, stats)


@functools.lru_cache(maxsize=4)
def _parsed_split(root: Path, split: str, stats: tuple) -> ImageDataset:
    """The split, parsed once per process while its files are unchanged (``stats``: their
    size, mtime and inode): the demo's four Fashion-MNIST experiments read it eight times,
    a second of gunzip each. The dataset is never changed in place (``subset`` copies)."""
    image_file, label_file = (root / n for n in FILES[split])
    image_raw, label_raw = image_file.read_bytes(), label_file.read_bytes()
    images = parse_idx(_gunzip(image_raw, image_file), str(image_file))  # (N, 28, 28) uint8
    labels = parse_idx(_gunzip(label_raw, label_file), str(label_file))  # (N,) uint8
    if images.ndim != 3 or images.dtype != np.uint8:
        raise InputError(f"{image_file}: expected (N, H, W) uint8 images, "
                         f"got {images.shape} {images.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(f"{label_file}: expected {len(images)} labels, got shape {labels.shape}")
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise InputError(f"{label_file}: label {int(labels.max())} out of range 0..9")
    n = len(labels)
    return ImageDataset(
        name=f"fashion-mnist-{split}",
        ids=[f"fashion-mnist/{split}/{i}" for i in range(n)],
        labels=labels,
        class_names=list(CLASS_NAMES),
        captions=[None] * n,
        fingerprint=stable_hash("fashion-mnist", split, image_raw, label_raw),
        # A copy, so that the image does not pin (or expose) the shared read-only buffer.
        loader=lambda i: Image.fromarray(images[i].copy()),
    )
