"""The cached stages before training: splits, embeddings, memory, neighbours.

Each stage's output is content-addressed in the cache directory, so a rerun (or another
experiment over the same data) reuses it: the three Fashion-MNIST experiments embed the
60k training images once.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, DataConfig, ExperimentConfig, RunConfig, unset_variables
from ..data import (ImageDataset, Splits, load_dataset, longtail_indices, stratified_split)
from ..data.dataset import held_out_classes, without_classes
from ..data.noise import with_label_noise
from ..device import resolve_device
from ..encoders import create_image_encoder, create_text_encoder
from ..encoders.embed import embed_images, is_embedded
from ..io import stable_hash
from ..memory.base import Memory, neighbor_labels
from ..memory.from_dataset import build_memory, with_wrong_values
from ..memory.compose import ComposedMemory, compose
from ..memory.sharded import ShardedMemory
from ..retrieval import cached_neighbors
from ..memory.indexing import index_signature, memory_index

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """A split with its embeddings; rows of unreadable images are already dropped."""

    dataset: ImageDataset
    z: np.ndarray  # (N, d)


LABEL_CHUNK = 1 << 20  # memory rows whose labels are read at a time


@dataclass
class Prepared:
    """Everything training and evaluation need for one experiment."""

    config: ExperimentConfig
    train: SplitData
    test: SplitData
    memory: ComposedMemory  # the experiment's memory, a view over its parts
    train_D: np.ndarray  # (N_train, k) neighbour similarities, self excluded
    train_I: np.ndarray  # (N_train, k) memory rows
    test_D: np.ndarray
    test_I: np.ndarray
    class_counts: np.ndarray  # (C,) training images per class
    skipped: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # memory rows the query sets retrieved, read once for every method (see methods._memory_rows)
    rows_cache: dict = field(default_factory=dict, repr=False)
    _labels: dict = field(default_factory=dict, repr=False)
    # near-duplicates of test and training images in the memory (see near_duplicates)
    contamination: dict | None = None
    # where training, evaluation and exact search run (run.device, resolved once)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    run: RunConfig | None = None  # the run it belongs to (fine-tuning prepares it again)

    def neighbor_labels(self, split: str) -> np.ndarray:
        """(N, k) memory labels of the "train" or "test" queries' neighbours (-1: none), read
        from the memory once for the vote and every method that reads them."""
        if split not in self._labels:
            self._labels[split] = neighbor_labels(self.memory, {"train": self.train_I, "test": self.test_I}[split])
        return self._labels[split]

    @property
    def num_classes(self) -> int:
        return len(self.train.dataset.class_names)

    @functools.cached_property
    def memory_label_counts(self) -> np.ndarray:
        """(C,) the memory's entries per class (unlabelled ones left out), read in chunks of
        rows so that a memory larger than RAM is never loaded whole."""
        counts = np.zeros(self.num_classes, np.int64)
        for start in range(0, len(self.memory), LABEL_CHUNK):
            labels = self.memory.labels_at(np.arange(start, min(start + LABEL_CHUNK, len(self.memory))))
            counts += np.bincount(labels[labels >= 0], minlength=self.num_classes)[:self.num_classes]
        return counts

    @functools.cached_property
    def neighbors_digest(self) -> str:
        """A hash of both query sets' neighbours and similarities, once per experiment."""
        return stable_hash(self.train_D, self.train_I, self.test_D, self.test_I)

    @functools.cached_property
    def embeddings_digest(self) -> str:
        """A hash of the training and test embeddings, once per experiment (the datasets'
        fingerprints do not say which encoder, or image size, made them)."""
        return stable_hash(self.train.z, self.test.z)


def test_like_training(cfg: DataConfig) -> bool:
    """Whether the test split is drawn like the training set: a stratified split of one
    collection (``load_splits`` cuts it) whose training side is not subsampled to a long tail."""
    carved = cfg.dataset == "tuxpaint" or cfg.dataset.startswith("imagefolder:")
    return carved and not cfg.longtail


def load_splits(cfg: DataConfig) -> tuple[ImageDataset, ImageDataset]:
    """(full training split, test split): datasets without a test split get a stratified one."""
    missing = unset_variables(cfg.dataset)
    if missing:
        raise ConfigError(f"data.dataset {cfg.dataset!r} uses environment variables that are not "
                          f"set: {', '.join(missing)}; export them or pass --set data.dataset=...")
    kwargs = {}
    if cfg.dataset == "tuxpaint" or cfg.dataset.startswith("imagefolder:"):
        kwargs["class_depth"] = cfg.class_depth
    data = load_dataset(cfg.dataset, **kwargs)
    if isinstance(data, ImageDataset):
        data = stratified_split(data, test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    assert isinstance(data, Splits)
    return data.train, data.test


def _cap(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most ``limit`` rows, taken round-robin over classes so every class keeps some."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [rows[i] for i in range(max(map(len, per_class))) for rows in per_class if i < len(rows)]
    return np.sort(np.asarray(order[:limit], dtype=np.int64))


def training_rows(cfg: DataConfig, full_train: ImageDataset) -> np.ndarray:
    """Rows of the full training split that form the training set (long-tailed, capped)."""
    rows = np.arange(len(full_train))
    if cfg.longtail:
        rows = longtail_indices(full_train.labels, imbalance_ratio=cfg.imbalance_ratio,
                                max_per_class=cfg.max_per_class, seed=cfg.longtail_seed)
    return rows[_cap(full_train.labels[rows], cfg.limit_train, cfg.split_seed)]


def needs_whole_split(run: RunConfig, exp: ExperimentConfig) -> bool:
    """Whether any experiment of the run on the same data and encoder uses the whole
    training split."""
    return any(e.data == exp.data and e.encoder == exp.encoder and "full-train" in e.memory.sources
               for e in run.experiments)


@dataclass
class Embedded:
    """The embedding stage's output: the full training split with its embeddings by row
    (rows never embedded, or unreadable, are invalid), the rows of it that form the training
    set, and the two query splits."""

    full_train: ImageDataset
    full_z: np.ndarray  # (N_full, d)
    full_valid: np.ndarray  # (N_full,) bool
    train_rows: np.ndarray  # the training set's rows of full_train, all valid
    train: SplitData  # its labels noisy where data.label_noise says so
    test: SplitData
    skipped: list[tuple[str, str]]


def prepare(run: RunConfig, exp: ExperimentConfig, cache_dir: Path, *,
            progress: bool = True, stage: str = "knn", encoder=None) -> Prepared:
    """Runs the cached stages up to ``stage`` ("embed", "memory" or "knn") for ``exp``, with
    ``encoder`` instead of ``exp.encoder`` where given (a fine-tuned one)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    full_train, test = load_splits(exp.data)
    test = test.subset(_cap(test.labels, exp.data.limit_test, exp.data.split_seed))
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    device = resolve_device(run.device)
    encoder = encoder or create_image_encoder(exp.encoder, device=device)
    emb = embed_splits(run, exp, encoder, full_train, test, cache_dir, progress, device)
    timings["embed"] = time.perf_counter() - t
    counts = np.bincount(emb.train.dataset.labels, minlength=emb.train.dataset.num_classes)
    prep = Prepared(exp, emb.train, emb.test, None, None, None, None, None, counts, emb.skipped, timings,
                    device=device, run=run)
    if stage == "embed":
        return prep

    t = time.perf_counter()
    prep.memory = make_memory(run, exp, encoder, emb, cache_dir)
    timings["memory"] = time.perf_counter() - t
    if stage == "memory":
        return prep

    t = time.perf_counter()
    find_neighbors(prep, cache_dir)
    timings["knn"] = time.perf_counter() - t
    return prep


def embed_splits(run: RunConfig, exp: ExperimentConfig, encoder, full_train: ImageDataset,
                 test: ImageDataset, cache_dir: Path, progress: bool, device: torch.device) -> Embedded:
    """The training set's rows of ``full_train`` (:func:`training_rows`) and the test images
    embedded on ``device`` (cached), the classes ``data.hold_out_fraction`` names left out,
    the training labels made noisy where ``data.label_noise`` says so."""
    train_rows = training_rows(exp.data, full_train)
    # Embed the whole training split when a memory of the run needs it or it is cached: the
    # long-tailed set is a row subset of it, so one cache entry serves every experiment on
    # the dataset. Otherwise embed just the training rows (a tiny run never pays for 60k).
    whole = needs_whole_split(run, exp) or is_embedded(encoder, full_train, cache_dir)
    base_rows = np.arange(len(full_train)) if whole else train_rows
    base = full_train if whole else full_train.subset(train_rows)
    batch = 256 if device.type == "cuda" else 64  # a GPU wants bigger batches (halved on OOM)
    base_emb = embed_images(encoder, base, cache_dir, strict=run.strict, progress=progress, batch_size=batch)
    test_emb = embed_images(encoder, test, cache_dir, strict=run.strict, progress=progress, batch_size=batch)
    # Scatter into full-split rows; rows never embedded stay invalid. The whole split needs
    # no scatter (a 300 MB copy for Fashion-MNIST's 60k).
    if whole and base_emb.embeddings.dtype == np.float32:
        full_z, full_valid = base_emb.embeddings, base_emb.valid.copy()
    else:
        full_z = np.zeros((len(full_train), encoder.dim), dtype=np.float32)
        full_valid = np.zeros(len(full_train), dtype=bool)
        full_z[base_rows], full_valid[base_rows] = base_emb.embeddings, base_emb.valid
    test_valid = test_emb.valid
    held = held_out_classes(full_train.class_names, exp.data.hold_out_fraction, exp.data.split_seed)
    if held:  # after embedding: the same images, so the same embedding cache entries
        full_train, test = without_classes(full_train, held), without_classes(test, held)
        full_valid &= full_train.labels >= 0
        test_valid = test_valid & (test.labels >= 0)
        log.info("%s: holding out %d classes: %s", exp.name, len(held), ", ".join(held))
    train_rows = train_rows[full_valid[train_rows]]
    train = SplitData(full_train.subset(train_rows), full_z[train_rows])
    if exp.data.label_noise > 0:
        train = SplitData(with_label_noise(train.dataset, exp.data.label_noise, exp.data.label_noise_seed),
                          train.z)
    test_ok = np.flatnonzero(test_valid)
    return Embedded(full_train, full_z, full_valid, train_rows, train,
                    SplitData(test.subset(test_ok), test_emb.embeddings[test_ok]),
                    base_emb.skipped + test_emb.skipped)


def find_neighbors(prep: Prepared, cache_dir: Path) -> None:
    """Fills in ``prep``'s neighbours of the training queries (each one's own entry and its
    near-duplicates excluded) and of the test queries, and its contamination count (cached)."""
    exp, memory = prep.config, prep.memory
    index = memory_index(memory, exp.retrieval, cache_dir, device=prep.device)
    # Neighbours depend on the keys, ids and index only: memories that differ in their
    # values (B and its noisy copy C) share them.
    key = stable_hash(memory.key_digest, exp.retrieval.index, index_signature(index))
    r = exp.retrieval
    k = min(r.k, len(memory) - 1)
    own = memory.rows_of(list(prep.train.dataset.ids))
    bound = r.duplicate_threshold if r.exclude_duplicates else None
    prep.train_D, prep.train_I = cached_neighbors(cache_dir / "neighbors", index, prep.train.z, k, "train",
                                                  memory_key=key, self_rows=own, max_similarity=bound)
    prep.test_D, prep.test_I = cached_neighbors(cache_dir / "neighbors", index, prep.test.z, k, "test",
                                                memory_key=key, max_similarity=bound)
    prep.contamination = near_duplicates(exp, index, memory, prep.train.z, own, prep.test.z, key, cache_dir)


#: How many of each query's nearest entries are checked for near-duplicates.
DUPLICATES_CHECKED = 16


def near_duplicates(exp: ExperimentConfig, index, memory, train_z, own, test_z, key, cache_dir) -> dict:
    """Counts the memory entries at or above ``retrieval.duplicate_threshold`` cosine
    similarity to each test image and, besides its own entry and byte-equal copies, to each
    training image, through the same index that retrieval uses (its nearest
    ``DUPLICATES_CHECKED``; a count that reaches it means at least that many). Retrieval
    excludes them unless ``retrieval.exclude_duplicates`` is false, which is warned about."""
    r = exp.retrieval
    k = min(DUPLICATES_CHECKED, len(memory) - 1)
    out = {"threshold": r.duplicate_threshold, "excluded": r.exclude_duplicates, "checked": k}
    for split, z, rows in (("test", test_z, None), ("train", train_z, own)):
        D, _ = cached_neighbors(cache_dir / "neighbors", index, z, k, f"{split}-duplicates",
                                memory_key=key, self_rows=rows)
        per_query = (D >= r.duplicate_threshold).sum(axis=1)
        out[f"{split}_images"] = int((per_query > 0).sum())
        out[f"{split}_entries"] = int(per_query.sum())
        out[f"{split}_total"] = len(z)
    if out["test_images"] and not r.exclude_duplicates:
        log.warning("%s: %d of %d test images have near-duplicates in the memory (cosine >= %g): "
                    "retrieval.exclude_duplicates=false keeps them, so the results are contaminated",
                    exp.name, out["test_images"], out["test_total"], r.duplicate_threshold)
    return out


def make_memory(run: RunConfig, exp: ExperimentConfig, encoder, emb: Embedded,
                cache_dir: Path) -> ComposedMemory:
    """The experiment's memory: its training set, the full training split, a memory folder
    (``ravis memory build`` / ``import``, memory-mapped), or several of these composed in
    order (a view: no part is copied)."""
    parts = [(spec, memory_part(run, exp, spec, encoder, emb, cache_dir)) for spec in exp.memory.sources]
    return compose(parts, list(emb.full_train.class_names))


def memory_part(run: RunConfig, exp: ExperimentConfig, spec: str, encoder, emb: Embedded,
                cache_dir: Path) -> Memory:
    """One memory part; "train" is the training set as training sees it (its labels noisy
    where data.label_noise says so), "full-train" the whole training split as published."""
    mcfg = exp.memory
    if spec in COLLECTIONS:  # built once per encoder pair into the cache
        from ..memory.collections import emoji_memory

        memory = ShardedMemory.open(emoji_memory(cache_dir, exp.encoder, run.text_encoder), verify=True)
        memory.check_query_encoder(encoder.fingerprint(), encoder.dim)
        return memory
    if spec not in DATASET_PARTS:
        memory = open_memory_folder(spec)
        memory.check_query_encoder(encoder.fingerprint(), encoder.dim)
        return memory
    full_z = emb.full_z
    rows = emb.train_rows if spec == "train" else np.flatnonzero(emb.full_valid)
    dataset = emb.train.dataset if spec == "train" else emb.full_train.subset(rows)
    device = resolve_device(run.device)
    text_encoder = create_text_encoder(run.text_encoder, device=device)
    image_values, value_fp = None, None
    if mcfg.values == "image":
        value_encoder = create_image_encoder(mcfg.value_encoder, device=device)
        vemb = embed_images(value_encoder, dataset, cache_dir, strict=run.strict)
        image_values, value_fp = vemb.embeddings, value_encoder.fingerprint()
    keys = full_z if np.array_equal(rows, np.arange(len(full_z))) else full_z[rows]  # all: no copy
    memory = build_memory(dataset, keys, key_encoder=encoder.fingerprint(),
                          kind=mcfg.values, text_encoder=text_encoder, cache_dir=cache_dir,
                          prompt=mcfg.prompt, image_values=image_values, value_encoder=value_fp)
    if mcfg.wrong_value_fraction > 0:
        memory = with_wrong_values(memory, mcfg.wrong_value_fraction, mcfg.wrong_value_seed,
                                   text_encoder, cache_dir, mcfg.prompt)
    return memory


#: memory.source entries made from the experiment's own dataset (in RAM); any other entry
#: is a memory folder.
DATASET_PARTS = ("train", "full-train")
#: Built-in image-text collections without labels in any experiment's classes
#: (:mod:`ravis.memory.collections`): "emoji", the emoji of three npm packages.
COLLECTIONS = ("emoji",)


def open_memory_folder(spec: str) -> ShardedMemory:
    """A memory folder, its files checked against their checksums before any byte is used
    (hashed once; later opens re-hash only files changed since)."""
    if not Path(spec).is_dir():
        raise FileNotFoundError(f"memory.source {spec!r}: no such memory folder")
    return ShardedMemory.open(spec, verify=True)
