"""The in-memory description of a labelled image collection, whatever its source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from ..config import MemoryConfig
from ..errors import InputError
from ..io import stable_hash


class BadImageError(InputError):
    """An image that cannot be decoded; the message names the file (or item) and the problem.

    ``kind`` names the problem for callers that answer differently to each (the server's
    HTTP errors): "missing", "empty", "too_many_pixels", "not_an_image" or "corrupt".
    """

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # the kind survives a trip between processes (a Ray worker)
        return BadImageError, (str(self), self.kind)


class MissingDataError(FileNotFoundError):
    """A dataset that is not on this machine; the message says which package or path to give."""


@dataclass
class ImageDataset:
    """Images with labels and optional captions.

    Images are loaded lazily by index through ``loader`` so that a dataset of a million
    files costs only its listing. ``fingerprint`` is a content hash of the data: embedding
    caches are keyed by it.
    """

    name: str
    ids: list[str]  # stable item ids: relative paths, or "<split>/<index>" for array datasets
    labels: np.ndarray  # (N,) int64 class indices into class_names
    class_names: list[str]
    captions: list[str | None]  # one per item; None where the item has no caption
    fingerprint: str
    loader: Callable[[int], Image.Image] = field(repr=False)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.ids)
        if len(self.labels) != n or len(self.captions) != n:
            raise InputError(f"{self.name}: ids, labels and captions differ in length "
                             f"({n}, {len(self.labels)}, {len(self.captions)})")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def load_image(self, i: int) -> Image.Image:
        """The i-th image; raises :class:`BadImageError` naming the item if it cannot be read."""
        return self.loader(i)

    def subset(self, idx, name: str | None = None) -> "ImageDataset":
        """The items ``idx`` (in that order), with the same classes."""
        idx = np.asarray(idx, dtype=np.int64)
        parent = self.loader
        return ImageDataset(
            name=name or self.name,
            ids=[self.ids[i] for i in idx],
            labels=self.labels[idx],
            class_names=self.class_names,
            captions=[self.captions[i] for i in idx],
            fingerprint=stable_hash(self.fingerprint, idx),
            loader=lambda j: parent(int(idx[j])),
        )

    def text_of(self, i: int, prompt: str = MemoryConfig.prompt) -> str:
        """The item's caption, or the label prompt when it has none."""
        cap = self.captions[i]
        return cap if cap else prompt.format(label=self.class_names[self.labels[i]])


@dataclass
class Splits:
    """A train/test pair over the same classes."""

    train: ImageDataset
    test: ImageDataset

    def __post_init__(self):
        if self.train.class_names != self.test.class_names:
            raise InputError("train and test splits must share class_names")


def held_out_classes(class_names: list[str], fraction: float, seed: int) -> list[str]:
    """``fraction`` of the classes (at least one when it is above 0), drawn with ``seed``."""
    if fraction <= 0:
        return []
    n = max(1, round(fraction * len(class_names)))
    rng = np.random.default_rng(seed)
    return sorted(str(c) for c in rng.choice(class_names, n, replace=False))


def without_classes(dataset: ImageDataset, names) -> ImageDataset:
    """The same items with the classes ``names`` taken out of the class list: their items
    get label -1 (for the caller to drop), the others are renumbered. The images are the same,
    so the fingerprint is too (the embedding cache is keyed by it)."""
    kept = [c for c in dataset.class_names if c not in set(names)]
    new = {c: i for i, c in enumerate(kept)}
    remap = np.array([new.get(c, -1) for c in dataset.class_names], dtype=np.int64)
    return ImageDataset(name=dataset.name, ids=dataset.ids, labels=remap[dataset.labels],
                        class_names=kept, captions=dataset.captions,
                        fingerprint=dataset.fingerprint, loader=dataset.loader)
