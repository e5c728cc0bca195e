"""Predictions from a finished run, with the neighbours each prediction leaned on.

    >>> p = ravis.load("demo-out", experiment="tuxpaint")      # or Predictor.load(...)
    >>> out = p.predict([PIL.Image.open("frog.png")])[0]
    >>> out["top5"][0], out["neighbors"][0]["weights"], out["timings_ms"]

The attention weights are the explanation (the paper's Figure 4): each prediction lists the
retrieved neighbours sorted by the last layer's attention, with their caption or label,
similarity, retrieval rank and the weight every layer gave them. The same structure is what
``ravis predict --json`` prints and what the server's ``POST /predict`` returns.

A run folder carries its memory (see :mod:`ravis.experiment.run_folder`), so loading needs
neither the cache nor the dataset; runs made before that rebuild the memory from the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from .config import ExperimentConfig, RunConfig, resolve
from .encoders import create_image_encoder
from .experiment.methods import build_model
from .experiment.prepare import memory_index
from .experiment.run import experiment_dir
from .experiment.run_folder import SERVING_FILE
from .experiment.thumbnails import ThumbnailStore
from .fusion import FUSIONS
from .index import create_index
from .io import default_cache_dir, load_json
from .memory.store import Memory


def load_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a ravis run folder (no config.yaml)")
    tree = yaml.safe_load(path.read_text())
    return resolve(tree)


def build_index(spec: str, keys: np.ndarray, search_params: dict | None = None):
    """An index of ``spec`` over the memory keys (trained on them first if it needs training),
    with ``search_params`` (e.g. ``{"nprobe": 16}``) applied."""
    index = create_index(spec, keys.shape[1])
    if not getattr(index, "is_trained", True):
        index.train(keys)
    index.add(keys)
    if search_params:
        if not hasattr(index, "set_search_params"):
            raise ValueError(f"index {spec!r} takes no search parameters (got {search_params})")
        index.set_search_params(**search_params)
    return index


@dataclass
class Predictor:
    """A trained fusion model with its encoder, memory, index and thumbnails."""

    config: RunConfig
    experiment: ExperimentConfig
    method: str
    encoder: object
    memory: Memory
    index: object
    model: torch.nn.Module
    class_names: list[str]
    k: int  # neighbours per query, as in training and evaluation
    adjustment: np.ndarray | None = None  # (C,) post-hoc prior correction subtracted from logits
    thumbnails: ThumbnailStore = field(default_factory=ThumbnailStore.empty)

    @classmethod
    def load(cls, run_dir: Path | str, experiment: str | None = None, method: str = "mam",
             cache_dir: Path | None = None, *, index: str | None = None,
             search_params: dict | None = None) -> "Predictor":
        """Loads experiment ``experiment`` (default: the first) of a run folder, model ``method``.

        ``index`` serves with another index spec than the run's (e.g. ``"faiss:IVF256,Flat"``
        with ``search_params={"nprobe": 16}``: an exact scan reads every key per query).
        """
        run_dir = Path(run_dir)
        cfg = load_config(run_dir)
        names = [e.name for e in cfg.experiments]
        exp = next((e for e in cfg.experiments if e.name == (experiment or names[0])), None)
        if exp is None:
            raise ValueError(f"{run_dir}: no experiment {experiment!r}; it has {names}")
        if method == "rac" or method == "knn_vote":
            raise ValueError(f"predict serves trained models that read keys/values per neighbour, "
                             f"not {method!r}")
        folder = experiment_dir(run_dir, exp.name)
        weights = folder / f"{method}.safetensors"
        if not weights.exists():
            raise FileNotFoundError(f"{weights}: no trained {method!r} model in this run")
        parts = (_from_run_folder(folder, method) if (folder / SERVING_FILE).exists()
                 else _from_cache(cfg, exp, Path(cache_dir or default_cache_dir())))
        memory = parts["memory"]
        encoder = create_image_encoder(cfg.encoder)
        memory.check_query_encoder(encoder.fingerprint(), encoder.dim)
        model = build_model(method, exp, memory.dim, memory.value_dim, len(parts["class_names"]))
        model.load_state_dict(load_file(str(weights)))
        model.eval()
        if index or search_params:
            searcher = build_index(index or exp.retrieval.index, memory.keys, search_params)
        else:  # the index the run searched (approximate ones come tuned from the cache)
            searcher = memory_index(exp, memory, Path(cache_dir or default_cache_dir()))
        return cls(cfg, exp, method, encoder, memory, searcher,
                   model, parts["class_names"], parts["k"], parts.get("adjustment"),
                   parts.get("thumbnails") or ThumbnailStore.empty())

    @torch.no_grad()
    def predict(self, images, top_classes: int = 5, top_neighbors: int | None = None) -> list[dict]:
        """For each PIL image: top classes with probabilities, and the retrieved neighbours
        sorted by last-layer attention (all k, or the ``top_neighbors`` most attended).

        ``timings_ms`` gives the time of each stage for the whole batch: encode (preprocess
        and encoder), search (the k-NN index), fuse (gather neighbours, fusion, classifier).
        """
        t0 = time.perf_counter()
        pixels = np.stack([self.encoder.preprocess(im) for im in images])
        z = self.encoder.encode_pixels(pixels)  # (B, d)
        t1 = time.perf_counter()
        D, I = self.index.search(z, self.k)  # (B, k)
        t2 = time.perf_counter()
        found = I >= 0  # an approximate index may return fewer than k
        rows = np.where(found, I, 0)
        keys = torch.from_numpy(np.asarray(self.memory.keys[rows], dtype=np.float32))  # (B, k, d)
        values = torch.from_numpy(np.asarray(self.memory.values[rows], dtype=np.float32))  # (B, k, d')
        logits, attn = self.model(torch.from_numpy(z), keys, values)  # (B, C), (B, L, k)
        logits = logits.numpy()
        if self.adjustment is not None:
            logits = logits - self.adjustment
        probs = _softmax(logits)
        attn = attn.numpy()
        t3 = time.perf_counter()
        timings = {"encode": 1e3 * (t1 - t0), "search": 1e3 * (t2 - t1), "fuse": 1e3 * (t3 - t2)}
        return [self._describe(probs[b], D[b], rows[b], found[b], attn[b], top_classes, top_neighbors,
                               timings, len(images)) for b in range(len(images))]

    def _describe(self, probs, D, rows, found, attn, top_classes, top_neighbors, timings, batch) -> dict:
        """One image's output: top classes, neighbours by attention, timings."""
        reads = bool(getattr(FUSIONS[self.method], "reads", ("keys", "values")))
        k = len(rows)
        if attn.shape[0]:
            last = attn[-1]  # (k,)
        else:  # mean kNN weighs every neighbour alike; linear and MLP read no neighbour
            last = np.full(k, 1.0 / k) if reads else np.full(k, np.nan)
        order = [j for j in np.argsort(-np.nan_to_num(last, nan=0.0), kind="stable") if found[j]]
        top = np.argsort(-probs)[:top_classes]
        return {
            "experiment": self.experiment.name,
            "method": self.method,
            "prediction": self.class_names[int(top[0])],
            "top5": [{"class": self.class_names[c], "index": int(c), "probability": float(probs[c])}
                     for c in top],
            "neighbors": [self._neighbor(int(rows[j]), j, float(D[j]), last[j], attn[:, j])
                          for j in order[:top_neighbors]],
            "k": k,
            "timings_ms": dict(timings),
            "batch_size": batch,
        }

    def _neighbor(self, row: int, j: int, similarity: float, weight: float, per_layer) -> dict:
        label = int(self.memory.labels[row])
        names = self.memory.class_names or self.class_names
        return {
            "memory_id": self.memory.ids[row],
            "row": row,
            "source": self.memory.sources[row],
            "text": self.memory.texts[row],
            "label": names[label] if 0 <= label < len(names) else None,
            "rank": int(j) + 1,  # retrieval rank, 1 = most similar
            "similarity": similarity,
            "weight": None if np.isnan(weight) else float(weight),  # last layer's attention
            "weights": [float(w) for w in per_layer],  # (L,) every layer's attention
            "has_thumbnail": self.memory.ids[row] in self.thumbnails,
        }


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _from_run_folder(folder: Path, method: str) -> dict:
    info = load_json(folder / SERVING_FILE)
    thumbs = folder / info.get("thumbnails", "thumbnails.parquet")
    adjustment = info.get("logit_adjustment", {}).get(method)
    memory = Memory.load(folder / info["memory"])
    parts = [(spec, int(rows)) for spec, rows in info.get("memory_parts", [])]
    if parts and all(spec in ("train", "full-train") or Path(spec).is_dir() for spec, _ in parts):
        memory.parts = parts  # so a sharded part is searched with its own index, as in the run
    return {"memory": memory, "class_names": list(info["class_names"]),
            "k": int(info["k"]),
            "adjustment": None if adjustment is None else np.asarray(adjustment, dtype=np.float32),
            "thumbnails": ThumbnailStore.open(thumbs) if thumbs.exists() else None}


def _from_cache(cfg: RunConfig, exp: ExperimentConfig, cache_dir: Path) -> dict:
    """Runs made before run folders carried their memory: rebuild it from the cache (seconds)."""
    from .experiment.prepare import prepare

    prep = prepare(cfg, exp, cache_dir, progress=False, stage="memory")
    return {"memory": prep.memory, "class_names": list(prep.train.dataset.class_names),
            "k": min(exp.retrieval.k, len(prep.memory) - 1)}


__all__ = ["Predictor", "build_index", "load_config"]
