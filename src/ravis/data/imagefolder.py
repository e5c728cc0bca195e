"""A folder of class folders (the torchvision ImageFolder layout), nested folders allowed,
and a deterministic stratified train/test split of any dataset.

::

    root/
      animals/amphibians/frog.jpg
      animals/amphibians/frog.txt      <- optional caption sidecar
      sports/ball.png

With ``class_depth=1`` the classes are ``animals`` and ``sports``; with ``class_depth=2``
they are ``animals/amphibians`` and ``sports`` (an image above the chosen depth is labelled
by its deepest folder).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import InputError
from ..io import stable_hash
from .dataset import ImageDataset, Splits
from .images import open_image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_BLOCK = 1 << 20  # 1 MiB


def load_imagefolder(root: Path | str, class_depth: int = 1,
                     extensions=IMAGE_EXTENSIONS) -> ImageDataset:
    """All images below ``root``, labelled by the folder they sit in.

    Args:
        root: the folder holding one folder per class.
        class_depth: which folder level names the class: the first ``class_depth`` folders
            below ``root`` joined with "/".
        extensions: file name endings counted as images (compared case-insensitively).

    Items are in sorted order of their path relative to ``root`` (which is also the id);
    hidden files and folders (names starting with ".") are skipped. A sidecar
    ``<stem>.txt`` gives the caption (its first non-empty line). The fingerprint hashes
    every relative path and the bytes of every image and sidecar, plus ``class_depth``.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no images, or images directly in ``root`` (they have no class).
    """
    check_class_depth(class_depth)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    rels = find_files(root, extensions)
    if not rels:
        raise InputError(f"{root}: no images ({', '.join(extensions)}) found below this folder")
    loose = [r for r in rels if len(PurePosixPath(r).parts) == 1]
    if loose:
        raise InputError(f"{root}: images directly in the root folder have no class; move them "
                         f"into a class folder: {', '.join(loose[:10])}"
                         + (f" and {len(loose) - 10} more" if len(loose) > 10 else ""))
    return build_dataset(root, rels, class_depth, name=root.name or str(root),
                         caption_of=lambda p: read_caption(p, first_non_empty=True))


def find_files(root: Path, extensions) -> list[str]:
    """Relative POSIX paths of the non-hidden files below ``root`` with one of ``extensions``,
    sorted. Symlinked folders are not followed (they could loop).

    Names that are not valid UTF-8 are kept as Python gives them (undecodable bytes as lone
    surrogates), so that the file opens; :func:`shown_name` makes the text that ids, class
    names and manifests hold."""
    exts = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(exts):
                found.append((rel_dir / f).as_posix())
    return sorted(found)


def shown_name(name: str) -> str:
    """A file name as UTF-8 text: bytes that are not valid UTF-8 (a Latin-1 "caf\\xe9.png")
    written as ``\\xNN``. Ids, captions and manifests are UTF-8 text; this is what they
    hold and what messages show for such a file."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def check_class_depth(class_depth: int) -> None:
    if not isinstance(class_depth, int) or class_depth < 1:
        raise InputError(f"class_depth must be an integer >= 1, got {class_depth!r}")


def class_of(rel: str, class_depth: int) -> str:
    """The class of a relative file path: its first ``class_depth`` folders joined with "/",
    or all its folders when it sits higher than that."""
    folders = PurePosixPath(rel).parts[:-1]
    return "/".join(folders[:class_depth])


def read_caption(image_path: Path, first_non_empty: bool) -> str | None:
    """The caption in the sidecar ``<stem>.txt`` beside an image, or None without one.

    Args:
        image_path: the image whose sidecar is read.
        first_non_empty: take the first non-empty line; otherwise the first line.
    """
    side = image_path.with_suffix(".txt")
    if not side.is_file():
        return None
    # errors="replace": one badly encoded caption should not stop a dataset from loading.
    lines = side.read_text(encoding="utf-8", errors="replace").splitlines()
    if first_non_empty:
        lines = [line for line in lines if line.strip()]
    return (lines[0].strip() or None) if lines else None


def content_hash(root: Path, rels: list[str], extra_suffixes=(".txt",)) -> str:
    """blake2b over each relative path and the bytes of the file and its sidecars.

    A missing sidecar is hashed as absent, so adding one changes the hash.
    """
    h = hashlib.blake2b(digest_size=16)
    for rel in rels:
        h.update(os.fsencode(rel) + b"\x00")
        path = root / rel
        for p in [path] + [path.with_suffix(s) for s in extra_suffixes]:
            if p != path and not p.is_file():
                h.update(b"\x01absent")
                continue
            with open(p, "rb") as f:
                while block := f.read(_BLOCK):
                    h.update(block)
            h.update(b"\x00")
    return h.hexdigest()


def build_dataset(root: Path, rels: list[str], class_depth: int, name: str,
                  caption_of) -> ImageDataset:
    """An ImageDataset over the files ``rels`` (relative to ``root``) labelled by folder.

    Args:
        caption_of: image path -> caption or None.
    """
    classes = [shown_name(class_of(r, class_depth)) for r in rels]
    class_names = sorted(set(classes))
    index = {c: i for i, c in enumerate(class_names)}
    paths = [root / r for r in rels]
    return ImageDataset(
        name=name,
        ids=[shown_name(r) for r in rels],
        labels=np.array([index[c] for c in classes], dtype=np.int64),
        class_names=class_names,
        captions=[caption_of(p) for p in paths],
        fingerprint=stable_hash(content_hash(root, rels), class_depth),
        loader=lambda i: open_image(paths[i]),
    )


def stratified_split(dataset: ImageDataset, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Splits each class separately so that train and test keep the class proportions.

    Per class, ``round(n * test_fraction)`` shuffled items go to test, clamped so that a
    class with at least two items has at least one in each split; a class with a single
    item goes to train only (a test item without training examples measures nothing).
    Items keep their original order within each split.
    """
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(dataset.num_classes):  # class order fixed, so one rng stream is deterministic
        idx = rng.permutation(np.flatnonzero(dataset.labels == c))
        n = len(idx)
        n_test = min(max(round(n * test_fraction), 1), n - 1) if n >= 2 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx = np.sort(np.concatenate(train)) if train else np.zeros(0, np.int64)
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    return Splits(train=dataset.subset(train_idx, name=f"{dataset.name}-train"),
                  test=dataset.subset(test_idx, name=f"{dataset.name}-test"))
