"""Building memories from a dataset's embeddings: the explicit write step (fusion only reads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.dataset import ImageDataset
from ..config import VALUE_KINDS, MemoryConfig
from ..errors import InputError
from .store import ArrayMemory



def entry_texts(dataset: ImageDataset, kind: str) -> list[str]:
    """What each entry says: its caption (``caption`` kind, where it has one) or its label."""
    names = dataset.class_names
    return [(cap if kind == "caption" and cap else names[y])
            for cap, y in zip(dataset.captions, dataset.labels)]


def value_texts(dataset: ImageDataset, kind: str, prompt: str) -> list[str]:
    """The strings whose embeddings become the values: captions, or the label prompt."""
    return [(cap if kind == "caption" and cap else prompt.format(label=dataset.class_names[y]))
            for cap, y in zip(dataset.captions, dataset.labels)]


def build_memory(dataset: ImageDataset, keys: np.ndarray, *, key_encoder: str, kind: str,
                 text_encoder=None, cache_dir: Path | None = None,
                 prompt: str = MemoryConfig.prompt, valid: np.ndarray | None = None,
                 image_values: np.ndarray | None = None, value_encoder: str | None = None) -> ArrayMemory:
    """A memory over ``dataset`` whose keys are ``keys`` (rows aligned with the dataset).

    Args:
        kind: "label_prompt" (values embed ``prompt`` with the label), "caption" (the item's
            caption, the prompt where it has none) or "image" (``image_values`` from a second,
            usually bigger, image encoder).
        valid: rows to keep (images that could not be decoded are dropped).
    """
    from ..encoders.embed import embed_texts

    if kind not in VALUE_KINDS:
        raise InputError(f"unknown memory value kind {kind!r}; choose from {VALUE_KINDS}")
    # every row kept: a slice, so the arrays are views (a 60k x 1280 copy otherwise)
    keep = np.flatnonzero(valid) if valid is not None else slice(None)
    if kind == "image":
        if image_values is None or value_encoder is None:
            raise InputError("value kind 'image' needs image_values and value_encoder")
        values = image_values
    else:
        if text_encoder is None:
            raise InputError(f"value kind {kind!r} needs a text encoder")
        values = embed_texts(text_encoder, value_texts(dataset, kind, prompt), cache_dir)
        value_encoder = text_encoder.fingerprint()
    texts, ids = entry_texts(dataset, kind), list(dataset.ids)
    if not isinstance(keep, slice):
        texts, ids = [texts[i] for i in keep], [ids[i] for i in keep]
    return ArrayMemory(keys=keys[keep], values=values[keep], labels=dataset.labels[keep],
                  texts=texts, ids=ids, sources=[dataset.name] * len(ids), key_encoder=key_encoder,
                  value_encoder=value_encoder, class_names=list(dataset.class_names))


def with_wrong_values(memory: ArrayMemory, fraction: float, seed: int, text_encoder,
                      cache_dir: Path | None = None, prompt: str = MemoryConfig.prompt) -> ArrayMemory:
    """A copy of a label-prompt memory whose entries, a ``fraction`` of them chosen with
    ``seed``, say a wrong class (uniform over the others): a stand-in for noisy web text.
    Labels and texts follow the wrong value, as they would for a mis-captioned web image."""
    from ..encoders.embed import embed_texts

    rng = np.random.default_rng(seed)
    num_classes = len(memory.class_names)
    flip = rng.random(len(memory)) < fraction
    labels = memory.labels.copy()
    labels[flip] = (labels[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
    prompts = embed_texts(text_encoder, [prompt.format(label=n) for n in memory.class_names], cache_dir)
    values = memory.values.copy()
    values[flip] = prompts[labels[flip]]
    return ArrayMemory(keys=memory.keys, values=values, labels=labels,
                  texts=[memory.class_names[y] for y in labels], ids=memory.ids,
                  sources=memory.sources, key_encoder=memory.key_encoder,
                  value_encoder=memory.value_encoder, class_names=memory.class_names,
                  thumbnails=memory.thumbnails)
