"""The split files of the standard long-tail benchmarks (ImageNet-LT, Places-LT, iNaturalist).

Each line is ``relative/path label_int``, e.g. ``train/n01440764/n01440764_190.JPEG 0``
in ``ImageNet_LT_train.txt``. The images themselves stay where they are: nothing is
opened or even stat-ed while loading (ImageNet-LT alone lists over 100,000 files), so a
missing image is reported only when it is loaded, as a :class:`BadImageError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import stable_hash
from .dataset import ImageDataset, Splits
from .images import open_image


def load_split_file(path: Path | str, image_root: Path | str,
                    class_names: list[str] | None = None) -> ImageDataset:
    """One split file as a dataset.

    Args:
        path: the split file.
        image_root: the folder the listed paths are relative to.
        class_names: names of classes 0..C-1; default ``class_<i>`` up to the largest label
            in the file (pass the names explicitly when two splits must agree, or use
            :func:`load_lt_splits`).

    The fingerprint hashes the split file's bytes, ``image_root`` as a string and the class
    names; it does not hash the images (that would mean reading every one of them), so
    changing an image in place without changing the split file keeps the fingerprint.

    Raises:
        FileNotFoundError: the split file is missing.
        ValueError: a malformed line or a label without a class name; the message gives
            the file and line number.
    """
    raw, rels, labels, linenos = _parse(Path(path))
    if class_names is None:
        class_names = default_class_names(int(labels.max()) + 1 if len(labels) else 0)
    return _dataset(Path(path), raw, rels, labels, linenos, Path(image_root), list(class_names))


def load_lt_splits(image_root: Path | str, train_file: Path | str, test_file: Path | str,
                   class_names_file: Path | str | None = None) -> Splits:
    """A train and a test split file over one image folder, with shared class names.

    Args:
        image_root: the folder both files' paths are relative to.
        train_file: the training split file.
        test_file: the test split file.
        class_names_file: one class name per line, line i naming class i; without it the
            names are ``class_<i>`` for every label either file uses.
    """
    train_file, test_file = Path(train_file), Path(test_file)
    parsed = {f: _parse(f) for f in (train_file, test_file)}
    if class_names_file is not None:
        names = read_class_names(class_names_file)
    else:
        n = max((int(lab.max()) + 1 for _, _, lab, _ in parsed.values() if len(lab)), default=0)
        names = default_class_names(n)
    train, test = (_dataset(f, *parsed[f], Path(image_root), names)
                   for f in (train_file, test_file))
    return Splits(train=train, test=test)


def default_class_names(n: int) -> list[str]:
    return [f"class_{i}" for i in range(n)]


def read_class_names(path: Path | str) -> list[str]:
    """One name per line; trailing blank lines are ignored, blank lines inside are an error."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    for i, name in enumerate(names):
        if not name:
            raise InputError(f"{path}:{i + 1}: empty class name (line i names class i - 1)")
    return names


def _parse(path: Path) -> tuple[bytes, list[str], np.ndarray, list[int]]:
    """(file bytes, relative paths, labels, line numbers) of a split file."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e})") from e
    rels, labels, linenos = [], [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        # rsplit: the label is the last field, so a path may itself contain spaces.
        fields = line.strip().rsplit(maxsplit=1)
        if len(fields) != 2:
            raise InputError(f"{path}:{lineno}: expected 'relative/path label', got {line!r}")
        try:
            label = int(fields[1])
        except ValueError:
            raise InputError(f"{path}:{lineno}: label {fields[1]!r} is not an integer") from None
        if label < 0:
            raise InputError(f"{path}:{lineno}: negative label {label}")
        rels.append(fields[0])
        labels.append(label)
        linenos.append(lineno)
    return raw, rels, np.array(labels, dtype=np.int64), linenos


def _dataset(path: Path, raw: bytes, rels: list[str], labels: np.ndarray, linenos: list[int],
             image_root: Path, class_names: list[str]) -> ImageDataset:
    too_big = np.flatnonzero(labels >= len(class_names))
    if len(too_big):
        i = int(too_big[0])
        raise InputError(f"{path}:{linenos[i]}: label {int(labels[i])} has no class name "
                         f"(only {len(class_names)} classes)")
    return ImageDataset(
        name=path.stem,
        ids=rels,
        labels=labels,
        class_names=class_names,
        captions=[None] * len(rels),
        fingerprint=stable_hash("lt-split", raw, str(image_root), class_names),
        loader=lambda i: open_image(image_root / rels[i]),
    )
