"""Predictions from a finished run, with the neighbours each prediction leaned on.

    >>> import PIL.Image, ravis
    >>> p = ravis.load("demo-out", experiment="tuxpaint")      # or Predictor.load(...)
    >>> out = p.predict([PIL.Image.open("frog.png")])[0]
    >>> out["top5"][0], out["evidence"][0]["parts"], out["explanation"], out["neighbors"][0]

Each prediction carries what produced it (:mod:`ravis.explain`): ``evidence``, the top
classes' scores split into their additive terms (the classifier's, the memory's, the prior
adjustment), ``explanation``, the same in a sentence, and the retrieved neighbours in the
order of what decided (``decided_by``): their share of the label vote (``vote_weight``), their
term in a mean kNN's score (``contribution``), or MAM's attention (``attention``: how values
were mixed into the embedding), with caption or label, similarity and retrieval rank.
Probabilities are calibrated: ``softmax(score / temperature)``, the temperature chosen on
validation. ``in_memory`` names the memory entry the query is, where it is one. The same
structure is what ``ravis predict --json`` prints and what the server's ``POST /predict``
returns.

The memory is opened from the run folder's references (:mod:`ravis.run_folder`), memory-
mapped: each request reads only its neighbours' keys, values and metadata.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .config import ExperimentConfig, RunConfig
from .device import autocast, resolve_device, to_device
from .encoders import create_image_encoder
from .errors import InputError
from .evaluation.calibration import softmax
from .evaluation.tables import served_label
from .explain import decided_by, evidence, in_memory, in_words, kind_of
from .fusion import build_model
from .io import default_cache_dir
from .memory.base import Memory, neighbor_labels
from .index.edited_index import EditedIndex
from .methods import DEFAULT_SERVED, method as get_method
from .memory.indexing import memory_index
from .run_folder import RunFolder, RunFolderError
from .thumbnails import media_type


@dataclass
class Predictor:
    """A trained fusion model with its encoder, memory and index."""

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
    run_dir: Path | None = None  # the run folder it was loaded from (the server offers its other models)
    temperature: float = 1.0  # probabilities are softmax(score / temperature), chosen on validation
    calibrated: bool = False  # False: the run recorded no temperature (a folder from before calibration)
    kept: dict | None = None  # what validation kept in place of the trained model, and why

    @classmethod
    def load(cls, run_dir: Path | str, experiment: str | None = None, method: str = DEFAULT_SERVED,
             cache_dir: Path | None = None, *, index: str | None = None,
             search_params: dict | None = None, device: str | None = None) -> "Predictor":
        """Loads experiment ``experiment`` (default: the first) of a run folder, model ``method``.

        ``index`` serves with another index spec than the run's (e.g. ``"faiss:IVF256,Flat"``
        with ``search_params={"nprobe": 16}``: an exact scan reads every key per query).
        """
        run = RunFolder(run_dir)
        cfg, record = run.open()
        exp, folder = run.pick(cfg, experiment)
        if not get_method(method).servable:
            raise InputError(f"predict serves trained models whose inputs are the neighbours "
                             f"themselves, not {method!r}")
        weights = folder.weights(method)
        if not weights.exists():
            raise FileNotFoundError(f"{weights}: no trained {method!r} model in this run")
        run.verify(record, [weights, folder.serving])
        info = folder.read_serving()
        if method in info.get("finetuned", {}):
            # its queries need the fine-tuned encoder (and, re-embedded, keys of it): served
            # with the run's frozen encoder and memory it would answer, wrongly, all the same
            raise RunFolderError(f"{folder.path}: {method!r} was trained with a fine-tuned encoder "
                                 f"(train.finetune_encoder, keys {info['finetuned'][method]}); serving "
                                 f"fine-tuned models is not supported yet: its metrics are in {run.RESULTS}")
        memory = folder.open_edited_memory(info)  # the run's memory with its edits
        base = memory.base
        device = resolve_device(device or cfg.device)
        encoder = create_image_encoder(exp.encoder, device=device)
        base.check_query_encoder(encoder.fingerprint(), encoder.dim)
        class_names = list(info["class_names"])
        state = load_file(str(weights), device=str(device))
        if exp.classifier.hidden_layer and not any(k.startswith("hidden.") for k in state):
            # weights from before MAM's classifier had a hidden layer: the linear head they had
            exp = dataclasses.replace(exp, classifier=dataclasses.replace(exp.classifier, hidden_layer=False))
        model = build_model(method, exp, memory.dim, memory.value_dim, len(class_names)).to(device)
        if model.label_counts is not None:
            # weights from before votes were balanced: all counts equal, the plain vote they had
            state.setdefault("label_counts", model.label_counts)
        model.load_state_dict(state)
        model.eval()
        retrieval = dataclasses.replace(exp.retrieval, index=index) if index else exp.retrieval
        searcher = EditedIndex(memory_index(base, retrieval, Path(cache_dir or default_cache_dir()),
                                            search_params=search_params or None, device=device), memory)
        if method not in info.get("logit_adjustment", {}):
            raise RunFolderError(f"{folder.serving}: no post-hoc adjustment recorded for "
                                 f"{method!r}; rerun the experiment")
        adjustment = info["logit_adjustment"][method]
        temperatures = info.get("temperature", {})
        return cls(cfg, exp, method, encoder, memory, searcher, model, class_names, int(info["k"]),
                   None if adjustment is None else np.asarray(adjustment, dtype=np.float32), run.path,
                   float(temperatures.get(method, 1.0)), method in temperatures, info.get("kept", {}).get(method))

    @property
    def all_class_names(self) -> list[str]:
        """The trained classes, then those that exist only in the memory (added by edits)."""
        return self.class_names + [c for c in self.memory.class_names if c not in self.class_names]

    def embed(self, images) -> np.ndarray:
        """(B, d) query embeddings of PIL images."""
        return self.encoder.encode_pixels(np.stack([self.encoder.preprocess(im) for im in images]))

    @torch.no_grad()
    def predict(self, images, top_classes: int = 5, top_neighbors: int | None = None) -> list[dict]:
        """For each PIL image: top classes with probabilities, the evidence that ranked them,
        and the retrieved neighbours, most decisive first (all k, or the first ``top_neighbors``).

        ``timings_ms`` gives the time of each stage for the whole batch: encode (preprocess
        and encoder), search (the k-NN index), fuse (gather neighbours, fusion, classifier).
        The memory is read as it is after the edits made so far (by this process or
        another), and one prediction never sees half an edit.
        """
        t0 = time.perf_counter()
        z = self.embed(images)  # (B, d)
        return self.predict_embeddings(z, top_classes, top_neighbors, t0=t0)

    @torch.no_grad()
    def predict_embeddings(self, z: np.ndarray, top_classes: int = 5, top_neighbors: int | None = None,
                           *, t0: float | None = None) -> list[dict]:
        """:meth:`predict` for query embeddings made by the run's encoder (B, d)."""
        t1 = time.perf_counter()
        with self.memory.lock:
            self.memory.refresh()
            return self._predict(np.asarray(z, dtype=np.float32), t1 if t0 is None else t0, t1,
                                 len(z), top_classes, top_neighbors)

    def _predict(self, z, t0, t1, batch, top_classes, top_neighbors) -> list[dict]:
        D, I = self.index.search(z, self.k)  # (B, k)
        t2 = time.perf_counter()
        found = I >= 0  # an approximate index may return fewer than k
        rows = np.where(found, I, 0)
        B, k = rows.shape
        # only the retrieved rows are read from the (memory-mapped) memory
        keys = torch.from_numpy(self.memory.keys_at(rows.ravel()).astype(np.float32).reshape(B, k, -1))
        values = torch.from_numpy(self.memory.values_at(rows.ravel()).astype(np.float32).reshape(B, k, -1))
        names = self.all_class_names
        labels = None
        if "labels" in self.model.reads:  # -1: no neighbour, or no label in the classes
            labels = torch.from_numpy(self._model_labels(neighbor_labels(self.memory, I), names))
        device = next(self.model.parameters()).device
        inputs = [None if t is None else to_device(t, device)
                  for t in (torch.from_numpy(z), keys, values, labels)]
        with autocast(device):
            terms = self.model.terms(*inputs, num_classes=len(names), new_counts=self._new_class_counts(names))
        host = lambda t: None if t is None else t.float().cpu().numpy()
        parts = {"classifier": host(terms.head)}  # (B, C') each: the additive terms of the scores
        if terms.memory is not None:
            parts["memory"] = host(terms.memory)
        score = host(terms.logits)
        if self.adjustment is not None:  # classes new in the memory get the mean adjustment
            extra = len(names) - len(self.adjustment)
            prior = np.concatenate([self.adjustment, np.full(extra, self.adjustment.mean())])
            score = score - prior
            if prior.any():
                parts["prior"] = np.broadcast_to(-prior, score.shape)
        probs = softmax(score / self.temperature)
        t3 = time.perf_counter()
        timings = {"encode": 1e3 * (t1 - t0), "search": 1e3 * (t2 - t1), "fuse": 1e3 * (t3 - t2)}
        out = _Batch(score, parts, probs, D, rows, found, host(terms.attention), host(terms.vote_weight),
                     host(terms.contribution), timings, self._entries(rows[found]), names)
        return [self._describe(out, b, top_classes, top_neighbors) for b in range(batch)]

    def _new_class_counts(self, names: list[str]) -> torch.Tensor | None:
        """(C' - C,) the memory's entries of each class beyond the trained ones, for a model
        whose vote is balanced by class counts (None otherwise, or where there is none). A
        class whose count the memory does not know (listed by its base, never counted) takes
        the trained classes' mean count."""
        extra = names[len(self.class_names):]
        if not extra or not self.model.balances_votes:
            return None
        counts, mean = self.memory.class_counts(), float(self.model.label_counts.mean())
        return torch.tensor([counts.get(c, mean) for c in extra], dtype=torch.float32)

    def _model_labels(self, labels: np.ndarray, names: list[str]) -> np.ndarray:
        """Memory label indexes as indexes into ``names`` (the model's classes first)."""
        where = {c: i for i, c in enumerate(names)}
        to_model = np.array([where[c] for c in self.memory.class_names] + [-1], dtype=np.int64)
        return to_model[labels]  # -1 (no label) stays -1: to_model[-1]

    def _entries(self, rows: np.ndarray) -> dict[int, dict]:
        """id, source, text, label name and thumbnail presence of memory rows."""
        rows = np.unique(rows)
        meta = self.memory.meta_at(rows, ["id", "source", "text", "thumbnail"])
        labels = self.memory.labels_at(rows)
        names = self.memory.class_names or self.class_names
        return {int(r): {"memory_id": meta["id"][j], "source": meta["source"][j], "text": meta["text"][j],
                         "label": names[labels[j]] if 0 <= labels[j] < len(names) else None,
                         "has_thumbnail": bool(meta["thumbnail"][j])}
                for j, r in enumerate(rows)}

    def thumbnail(self, row: int) -> tuple[bytes, str] | None:
        """(image bytes, MIME type) of memory row ``row``, or None where it has none (or
        was deleted)."""
        if not 0 <= row < len(self.memory) or not self.memory.is_live([row])[0]:
            return None
        data = self.memory.meta_at([row], ["thumbnail"])["thumbnail"][0]
        return (data, media_type(data)) if data else None

    @property
    def method_label(self) -> str:
        """What is served, by name: "MAM (memory attention), kept: kNN vote" where validation
        replaced the trained model by the vote (:func:`ravis.evaluation.tables.served_label`)."""
        return served_label(self.method, self.kept)

    def _describe(self, out: "_Batch", b: int, top_classes: int, top_neighbors: int | None) -> dict:
        """Image ``b``'s output: top classes, the evidence that ranked them, the neighbours in
        the order of what decided, timings."""
        names, rows = out.names, out.rows[b]
        attn = out.attention[b]
        votes = None if out.vote_weight is None else out.vote_weight[b]
        contribution = None if out.contribution is None else out.contribution[b]
        attends = get_method(self.method).attends and attn.shape[0] > 0
        kind = kind_of(votes is not None, contribution is not None, attn.shape[0] if attends else 0)
        ev = evidence(out.score[b], {n: v[b] for n, v in out.parts.items()}, names, top_classes)
        predicted = ev[0]["index"]
        neighbours = []
        for j in np.flatnonzero(out.found[b]):
            n = self._neighbor(out.entries, int(rows[j]), int(j), float(out.D[b, j]))
            n["vote_weight"] = None if votes is None else float(votes[j])
            n["attention"] = float(attn[-1, j]) if attends else None
            n["attention_by_layer"] = [float(w) for w in attn[:, j]] if attends else None
            n["contribution"] = None if contribution is None else float(contribution[j, predicted])
            neighbours.append(n)
        key = decided_by(kind)
        if key:  # most decisive first; retrieval rank breaks ties (and orders non-voters)
            neighbours.sort(key=lambda n: -n[key])
        return {
            "experiment": self.experiment.name,
            "method": self.method,
            "method_label": self.method_label,
            "kept": self.kept,
            "prediction": names[predicted],
            "top5": [{"class": e["class"], "index": e["index"], "probability": float(out.probs[b, e["index"]])}
                     for e in ev],
            "evidence": ev,
            "explanation": in_words(kind, ev, neighbours, self.kept and self.kept["kept"])
            + _missing(len(rows) - len(neighbours), len(rows)),
            "decided_by": key,
            "temperature": self.temperature,
            "calibrated": self.calibrated,
            "in_memory": in_memory(neighbours),
            "neighbors": neighbours[:top_neighbors],
            "k": len(rows),
            "timings_ms": dict(out.timings),
            "batch_size": len(out.rows),
        }

    @staticmethod
    def _neighbor(entries: dict, row: int, j: int, similarity: float) -> dict:
        e = entries[row]
        return {
            "memory_id": e["memory_id"],
            "row": row,
            "source": e["source"],
            "text": e["text"],
            "label": e["label"],
            "rank": int(j) + 1,  # retrieval rank, 1 = most similar
            "similarity": similarity,
            "has_thumbnail": e["has_thumbnail"],
        }


def _missing(n: int, k: int) -> str:
    """What the explanation must add where the index found fewer than k neighbours."""
    if not n:
        return ""
    return (f" The approximate index found only {k - n} of the k={k} neighbours; the model read a placeholder "
            f"row (memory row 0) for the other {n}, so the weights listed do not cover all of its input.")


@dataclass
class _Batch:
    """One batch's model outputs, host arrays with the batch first, that each image's
    description reads its row of."""

    score: np.ndarray  # (B, C') the logits that rank the classes (after the prior adjustment)
    parts: dict  # name -> (B, C') the additive terms of score
    probs: np.ndarray  # (B, C') softmax(score / temperature)
    D: np.ndarray  # (B, k) similarities
    rows: np.ndarray  # (B, k) memory rows (0 where none was found)
    found: np.ndarray  # (B, k) bool
    attention: np.ndarray  # (B, L, k)
    vote_weight: np.ndarray | None  # (B, k)
    contribution: np.ndarray | None  # (B, k, C')
    timings: dict
    entries: dict
    names: list


__all__ = ["Predictor"]
