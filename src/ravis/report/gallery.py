"""The Figure-4 gallery: test images, right and wrong, from many-, mid- and few-shot classes,
each with the evidence that ranked its classes (:mod:`ravis.explain`) and its neighbours in
the order of what decided: their share of the label vote where the served MAM reads labels,
else its attention.

The evidence is rebuilt from the run's own records, not recomputed: the test logits, each
neighbour's vote share (``vote_weights_mam``) and the vote's weight beta (the served weights)
give the memory's term ``beta * log(eps + votes)``, and the classifier's term is the rest."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.longtail import shot_buckets
from ..evaluation.calibration import VOTE_EPS, softmax
from ..explain import evidence, in_words
from ..run_folder import ExperimentFolder


@dataclass
class Neighbour:
    memory_id: str
    text: str
    label: str | None
    rank: int  # retrieval rank, 1 = most similar
    similarity: float
    attention: float  # last-layer attention
    vote_weight: float | None = None  # share of the label vote (None: the model reads no labels)
    thumbnail: bytes = b""  # from the memory's metadata (b"" for none)


@dataclass
class Example:
    test_id: str
    true: str
    predicted: str
    bucket: str  # many | mid | few
    correct: bool
    neighbours: list[Neighbour]
    probability: float = 0.0  # of the predicted class, calibrated as served
    explanation: str = ""  # what decided, in words (ravis.explain.in_words)
    evidence: list = field(default_factory=list)  # the top classes' additive terms


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
    """The gallery of one experiment from its run folder (predictions.npz, serving.json, the
    served weights and the memory it refers to, of which only the neighbours' rows are read)."""
    with np.load(folder.predictions, allow_pickle=False) as f:
        if "attention_mam" not in f or "logits_mam" not in f:
            return []
        labels = f["labels"]
        # a fine-tuned MAM with a re-embedded memory retrieved neighbours of its own
        I, D = ((f["neighbors_mam"], f["similarities_mam"]) if "neighbors_mam" in f
                else (f["neighbors"], f["similarities"]))
        attn = f["attention_mam"][:, -1, :].astype(np.float32)  # (N, k)
        logits = f["logits_mam"].astype(np.float64)
        votes = f["vote_weights_mam"].astype(np.float64) if "vote_weights_mam" in f else None
    info = folder.read_serving()
    temperature = float(info.get("temperature", {}).get("mam", 1.0))
    kept = info.get("kept", {}).get("mam", {}).get("kept")
    test_ids = folder.read_test_ids()
    memory = folder.open_memory()
    classes = entry["class_names"]
    mem_classes = memory.class_names or classes
    pred = logits.argmax(1)
    picked = pick_examples(labels, pred, entry["class_counts"], per_cell)
    rows = np.unique(np.concatenate([I[r][I[r] >= 0] for r in picked] or [np.zeros(0, np.int64)])).astype(np.int64)
    meta = memory.meta_at(rows, ["id", "text", "thumbnail"])
    names = [mem_classes[y] if y >= 0 else None for y in memory.labels_at(rows)]
    at = {int(r): i for i, r in enumerate(rows)}
    beta = _vote_weight(folder) if votes is not None else None
    adjustment = np.asarray(info["logit_adjustment"].get("mam") or np.zeros(len(classes)), dtype=np.float64)
    buckets = shot_buckets(np.asarray(entry["class_counts"]))
    out = []
    for row in picked:
        found = [j for j in range(I.shape[1]) if I[row, j] >= 0]
        neighbours = [Neighbour(meta["id"][at[int(I[row, j])]], meta["text"][at[int(I[row, j])]],
                                names[at[int(I[row, j])]], j + 1, float(D[row, j]), float(attn[row, j]),
                                None if votes is None else float(votes[row, j]),
                                meta["thumbnail"][at[int(I[row, j])]] or b"") for j in found]
        ev, words = _evidence(logits[row], adjustment, votes is not None and beta, neighbours, classes, kept)
        order = sorted(neighbours, key=lambda n: -(n.vote_weight if votes is not None else n.attention))
        probs = softmax(logits[row] / temperature)
        out.append(Example(test_ids[row], classes[labels[row]], classes[pred[row]], str(buckets[labels[row]]),
                           bool(pred[row] == labels[row]), order[:top], float(probs[pred[row]]), words, ev))
    return out


def _vote_weight(folder: ExperimentFolder) -> float:
    """beta, the weight of the served MAM's label evidence, from its weights file."""
    from safetensors import safe_open

    with safe_open(str(folder.weights("mam")), framework="np") as f:
        return float(f.get_tensor("label_weight"))


def _evidence(logits, adjustment, beta, neighbours: list[Neighbour], classes, kept) -> tuple[list, str]:
    """(the top classes' terms, the sentence) of one test image, from its logged logits and
    vote shares; with no vote (``beta`` False) the classifier's term is the whole score."""
    head = logits + adjustment
    parts = {"classifier": head}
    if beta is not False:
        votes = np.zeros(len(classes))
        index = {c: i for i, c in enumerate(classes)}
        for n in neighbours:
            if n.vote_weight and n.label in index:
                votes[index[n.label]] += n.vote_weight
        parts["memory"] = beta * np.log(votes + VOTE_EPS)
        parts["classifier"] = head - parts["memory"]
    if adjustment.any():
        parts["prior"] = -adjustment
    ev = evidence(logits, parts, classes, top=3)
    kind = "vote" if beta is not False else "attention"
    listed = [{"label": n.label, "vote_weight": n.vote_weight} for n in neighbours]
    return ev, in_words(kind, ev, listed, kept)
__all__ = ["Example", "Neighbour", "build_examples", "pick_examples"]
