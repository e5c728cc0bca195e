"""Datasets: Fashion-MNIST, the Tux Paint stamps, image folders and long-tail split files,
all as :class:`ImageDataset` (lazy images, labels, optional captions, a content fingerprint).

Datasets are named by a spec string (see :func:`load_dataset`) so that configs stay free
of loader code.
"""

from __future__ import annotations

from ..errors import InputError
from .dataset import BadImageError, ImageDataset, MissingDataError, Splits
from .fashion_mnist import load_fashion_mnist
from .imagefolder import load_imagefolder, stratified_split
from .images import open_image
from .longtail import BUCKETS, longtail_indices, shot_buckets
from .lt_split import load_lt_splits, load_split_file
from .tuxpaint import load_tuxpaint

__all__ = [
    "BUCKETS", "BadImageError", "ImageDataset", "MissingDataError", "Splits",
    "load_dataset", "load_fashion_mnist", "load_imagefolder", "load_lt_splits",
    "load_split_file", "load_tuxpaint", "longtail_indices", "open_image", "shot_buckets",
    "stratified_split",
]

SPECS = ("fashion-mnist", "tuxpaint", "imagefolder:PATH",
         "lt-split:IMAGE_ROOT:TRAIN_FILE:TEST_FILE")


def load_dataset(spec: str, **kwargs) -> ImageDataset | Splits:
    """Loads a dataset named by a spec string; ``kwargs`` go to the loader.

    * ``fashion-mnist`` -> :class:`Splits` (:func:`load_fashion_mnist`)
    * ``tuxpaint`` -> :class:`ImageDataset` (:func:`load_tuxpaint`)
    * ``imagefolder:PATH`` -> :class:`ImageDataset` (:func:`load_imagefolder`)
    * ``lt-split:IMAGE_ROOT:TRAIN_FILE:TEST_FILE`` -> :class:`Splits` (:func:`load_lt_splits`)

    Only the first ":" separates the kind, so ``imagefolder:`` takes any path, colons
    included. The three ``lt-split`` paths are split on ":" into at most three parts, so
    absolute POSIX paths work and only the last path (the test file) may contain a ":";
    a Windows drive letter (``C:\\data``) is recognised and kept with its path.
    """
    kind, sep, arg = spec.partition(":")
    if kind == "fashion-mnist" and not sep:
        return load_fashion_mnist(**kwargs)
    if kind == "tuxpaint" and not sep:
        return load_tuxpaint(**kwargs)
    if kind == "imagefolder" and arg:
        return load_imagefolder(arg, **kwargs)
    if kind == "lt-split" and arg:
        parts = _split_paths(arg, 3)
        if len(parts) == 3 and all(parts):
            return load_lt_splits(*parts, **kwargs)
        raise InputError(f"dataset spec {spec!r}: expected "
                         "lt-split:IMAGE_ROOT:TRAIN_FILE:TEST_FILE")
    raise InputError(f"unknown dataset spec {spec!r}; expected one of: {', '.join(SPECS)}")


def _split_paths(text: str, n: int) -> list[str]:
    """Splits ``text`` on ":" into at most ``n`` paths, gluing a drive letter back on."""
    pieces = text.split(":")
    paths: list[str] = []
    i = 0
    while i < len(pieces):
        piece = pieces[i]
        # "C" followed by "\\data" or "/data" was one Windows path, "C:\\data".
        if len(piece) == 1 and piece.isalpha() and i + 1 < len(pieces) \
                and pieces[i + 1][:1] in ("\\", "/"):
            piece = f"{piece}:{pieces[i + 1]}"
            i += 1
        if len(paths) == n - 1:  # the last path takes the rest, colons and all
            paths.append(":".join([piece] + pieces[i + 1:]))
            break
        paths.append(piece)
        i += 1
    return paths
