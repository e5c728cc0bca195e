"""The Figure-4 gallery: test images, right and wrong, from many-, mid- and few-shot classes,
each with the neighbours the memory attention leaned on and their weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.longtail import shot_buckets
from ..run_folder import ExperimentFolder


@dataclass
class Neighbour:
    memory_id: str
    text: str
    label: str | None
    rank: int  # retrieval rank, 1 = most similar
    similarity: float
    weight: float  # last-layer attention
    thumbnail: bytes = b""  # from the memory's metadata (b"" for none)


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


def build_examples(folder: ExperimentFolder, entry: dict, per_cell: int = 2, top: int = 8) -> list[Example]:
    """The gallery of one experiment from its run folder (predictions.npz and the memory it
    refers to, of which only the shown neighbours' rows are read)."""
    with np.load(folder.predictions, allow_pickle=False) as f:
        if "attention_mam" not in f or "logits_mam" not in f:
            return []
        labels = f["labels"]
        # a fine-tuned MAM with a re-embedded memory retrieved neighbours of its own
        I, D = ((f["neighbors_mam"], f["similarities_mam"]) if "neighbors_mam" in f
                else (f["neighbors"], f["similarities"]))
        attn = f["attention_mam"][:, -1, :].astype(np.float32)  # (N, k)
        pred = f["logits_mam"].argmax(1)
    test_ids = folder.read_test_ids()
    memory = folder.open_memory()
    classes = entry["class_names"]
    mem_classes = memory.class_names or classes
    picked = pick_examples(labels, pred, entry["class_counts"], per_cell)
    shown = {row: [j for j in np.argsort(-attn[row], kind="stable")[:top] if I[row, j] >= 0] for row in picked}
    rows = np.unique([I[row, j] for row, js in shown.items() for j in js]).astype(np.int64)
    meta = memory.meta_at(rows, ["id", "text", "thumbnail"])
    mem_labels = memory.labels_at(rows)
    at = {int(r): i for i, r in enumerate(rows)}
    out = []
    for row in picked:
        neighbours = []
        for j in shown[row]:
            i = at[int(I[row, j])]
            neighbours.append(Neighbour(meta["id"][i], meta["text"][i],
                                        mem_classes[mem_labels[i]] if mem_labels[i] >= 0 else None,
                                        int(j) + 1, float(D[row, j]), float(attn[row, j]),
                                        meta["thumbnail"][i] or b""))
        bucket = str(shot_buckets(np.asarray(entry["class_counts"]))[labels[row]])
        out.append(Example(test_ids[row], classes[labels[row]], classes[pred[row]], bucket,
                           bool(pred[row] == labels[row]), neighbours))
    return out


__all__ = ["Example", "Neighbour", "build_examples", "pick_examples"]
