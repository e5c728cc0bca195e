"""What makes an experiment's folder self-sufficient: a model there can serve without the cache.

Beside the trained weights, each experiment folder gets:

    memory/                  the experiment's memory (ravis.memory.store format, no pickle)
    thumbnails.parquet       id -> small image of each memory entry that has one
    test_thumbnails.parquet  id -> small image of each test image (the report's gallery)
    serving.json             class names, k, index spec, memory fingerprint, and each
                             method's post-hoc logit adjustment (so served probabilities are
                             those the evaluation scored)

Memories whose arrays are identical (the demo's B and C share keys) are hard-linked, not
copied. A rerun whose memory fingerprint has not changed rewrites nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..io import atomic_path, load_json, save_json
from ..memory.store import Memory
from ..training.loss import log_prior
from .methods import MethodResult, validation_split
from .prepare import Prepared, load_splits
from .thumbnails import append_thumbnails, write_thumbnails

log = logging.getLogger(__name__)

SERVING_FILE = "serving.json"
FORMAT_VERSION = 1


def logit_adjustment(prep: Prepared, method: str, result: MethodResult) -> list[float]:
    """The vector train_method subtracts from a method's test logits (post-hoc prior correction).

    Recomputed the way training made it: the prior of the fit split (the training set minus
    its validation rows). tests/serve checks served probabilities against the saved logits.
    """
    cfg = prep.config.train
    labels = prep.train.dataset.labels
    val = (validation_split(labels, cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0
           else np.zeros(len(labels), dtype=bool))
    counts = np.bincount(labels[~val], minlength=prep.num_classes)
    tau = float(result.details.get("posthoc_tau", 0.0) or 0.0)
    return (tau * log_prior(counts).numpy()).astype(float).tolist()


def save_memory(memory: Memory, folder: Path, run_dir: Path, fingerprint: str) -> None:
    """Memory.save into ``folder`` unless it already holds this memory; then hard-links
    arrays identical to another experiment's saved memory in the same run."""
    marker = folder / "fingerprint.json"
    if marker.exists() and load_json(marker).get("fingerprint") == fingerprint:
        return
    memory.save(folder)
    manifest = load_json(folder / "manifest.json")
    for other in sorted(Path(run_dir).glob("*/memory/manifest.json")):
        if other.parent == folder:
            continue
        theirs = load_json(other)["checksums"]
        for name, checksum in manifest["checksums"].items():
            mine, src = folder / f"{name}.npy", other.parent / f"{name}.npy"
            if theirs.get(name) == checksum and src.exists() and not _same_file(src, mine):
                with atomic_path(mine) as tmp:
                    tmp.unlink()
                    os.link(src, tmp)
    save_json(marker, {"fingerprint": fingerprint})


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def sharded_thumbnails(memory: Memory) -> tuple[list[str], list[bytes]]:
    """(memory ids, thumbnails) of the entries that come from sharded memories, which keep a
    thumbnail per row in their metadata; ids as the composed memory names them."""
    from ..memory.compose import source_name
    from ..memory.sharded import ShardedMemory
    from .prepare import is_sharded_memory

    ids, images = [], []
    for n, (spec, _) in enumerate(memory.parts):
        if not is_sharded_memory(spec):
            continue
        prefix = f"{source_name(spec)}:" if n else ""  # compose prefixes every part but the first
        sharded = ShardedMemory.open(spec)
        for i in range(len(sharded.shard_names)):
            meta = sharded.meta(i, columns=["id", "thumbnail"]).to_pydict()
            for item, thumb in zip(meta["id"], meta["thumbnail"]):
                if thumb:
                    ids.append(prefix + item)
                    images.append(thumb)
    known = set(memory.ids)
    keep = [j for j, i in enumerate(ids) if i in known]
    return [ids[j] for j in keep], [images[j] for j in keep]


def save_for_serving(folder: Path, run_dir: Path, prep: Prepared, methods: dict[str, MethodResult],
                     cache_dir: Path) -> None:
    """Writes the memory, thumbnails and serving.json of one experiment's folder."""
    exp, memory = prep.config, prep.memory
    fingerprint = memory.fingerprint
    save_memory(memory, folder / "memory", run_dir, fingerprint)
    full_train, _ = load_splits(exp.data)
    row_of = {item: r for r, item in enumerate(full_train.ids)}
    rows = [row_of[i] for i in memory.ids if i in row_of]  # entries with an image we can load
    write_thumbnails(folder / "thumbnails.parquet", full_train, rows, cache_dir=cache_dir)
    sharded_ids, sharded_images = sharded_thumbnails(memory)
    if sharded_ids:
        append_thumbnails(folder / "thumbnails.parquet", sharded_ids, sharded_images)
    write_thumbnails(folder / "test_thumbnails.parquet", prep.test.dataset, cache_dir=cache_dir)
    save_json(folder / SERVING_FILE, {
        "format": FORMAT_VERSION,
        "experiment": exp.name,
        "class_names": list(prep.train.dataset.class_names),
        "class_counts": [int(c) for c in prep.class_counts],
        "k": int(prep.test_I.shape[1]),
        "index": exp.retrieval.index,
        "memory": "memory",
        "memory_fingerprint": fingerprint,
        "memory_size": len(memory),
        "memory_parts": [[spec, int(rows)] for spec, rows in memory.parts],
        "thumbnails": "thumbnails.parquet",
        "test_thumbnails": "test_thumbnails.parquet",
        "logit_adjustment": {name: logit_adjustment(prep, name, r) for name, r in methods.items()
                             if name != "knn_vote"},
    })


__all__ = ["SERVING_FILE", "logit_adjustment", "save_for_serving", "save_memory"]
