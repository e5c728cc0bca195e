"""The Figure-4 gallery: test images, right and wrong, from many-, mid- and few-shot classes,
each with the neighbours the memory attention leaned on and their weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.longtail import shot_buckets
from ..io import load_json


@dataclass
class Neighbour:
    memory_id: str
    text: str
    label: str | None
    rank: int  # retrieval rank, 1 = most similar
    similarity: float
    weight: float  # last-layer attention


@dataclass
class Example:
    test_id: str
    true: str
    predicted: str
    bucket: str  # many | mid | few
    correct: bool
    neighbours: list[Neighbour]


def pick_examples(labels: np.ndarray, pred: np.ndarray, class_counts, per_cell: int = 2,
                  seed: int = 0) -> list[int]:
    """Test rows: ``per_cell`` correct and ``per_cell`` wrong from each of many / mid / few
    (fewer where a cell is empty), chosen with ``seed``."""
    buckets = shot_buckets(np.asarray(class_counts))[labels]  # (N,)
    order = np.random.default_rng(seed).permutation(len(labels))
    rows = []
    for bucket in ("many", "mid", "few"):
        for correct in (True, False):
            cell = [i for i in order if buckets[i] == bucket and (pred[i] == labels[i]) == correct]
            rows += cell[:per_cell]
    return [int(r) for r in rows]


def memory_meta(folder: Path) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """(ids, texts, labels, class names) of a saved memory, without loading its arrays."""
    import pyarrow.parquet as pq

    meta = pq.read_table(folder / "meta.parquet", columns=["id", "text"]).to_pydict()
    labels = np.load(folder / "labels.npy", allow_pickle=False)
    return meta["id"], meta["text"], labels, load_json(folder / "manifest.json").get("class_names", [])


def build_examples(exp_folder: Path, entry: dict, per_cell: int = 2, top: int = 8) -> list[Example]:
    """The gallery of one experiment from its run folder (predictions.npz, memory meta)."""
    with np.load(exp_folder / "predictions.npz", allow_pickle=False) as f:
        if "attention_mam" not in f or "logits_mam" not in f:
            return []
        labels, I, D = f["labels"], f["neighbors"], f["similarities"]
        attn = f["attention_mam"][:, -1, :].astype(np.float32)  # (N, k)
        pred = f["logits_mam"].argmax(1)
    test_ids = load_json(exp_folder / "test_ids.json")
    ids, texts, mem_labels, mem_classes = memory_meta(exp_folder / "memory")
    classes = entry["class_names"]
    mem_classes = mem_classes or classes
    out = []
    for row in pick_examples(labels, pred, entry["class_counts"], per_cell):
        order = np.argsort(-attn[row], kind="stable")[:top]
        neighbours = [Neighbour(ids[I[row, j]], texts[I[row, j]],
                                mem_classes[mem_labels[I[row, j]]] if mem_labels[I[row, j]] >= 0 else None,
                                int(j) + 1, float(D[row, j]), float(attn[row, j]))
                      for j in order if I[row, j] >= 0]
        bucket = str(shot_buckets(np.asarray(entry["class_counts"]))[labels[row]])
        out.append(Example(test_ids[row], classes[labels[row]], classes[pred[row]], bucket,
                           bool(pred[row] == labels[row]), neighbours))
    return out


__all__ = ["Example", "Neighbour", "build_examples", "memory_meta", "pick_examples"]
