"""Predictions from a finished run, with the neighbours each prediction leaned on.

    >>> p = Predictor.load("demo-out", experiment="tuxpaint")
    >>> p.predict([PIL.Image.open("frog.png")])[0]["top5"]

The attention weights are the explanation: each prediction lists the retrieved neighbours
sorted by the last layer's attention, with their caption or label and similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from .config import ExperimentConfig, RunConfig, resolve
from .encoders import create_image_encoder
from .experiment.methods import build_model
from .experiment.prepare import prepare
from .experiment.run import experiment_dir
from .index import create_index
from .io import default_cache_dir
from .memory.store import Memory
from .retrieval import search_neighbors


def load_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a ravis run folder (no config.yaml)")
    tree = yaml.safe_load(path.read_text())
    return resolve(tree)


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

    @classmethod
    def load(cls, run_dir: Path | str, experiment: str | None = None, method: str = "mam",
             cache_dir: Path | None = None) -> "Predictor":
        run_dir = Path(run_dir)
        cfg = load_config(run_dir)
        names = [e.name for e in cfg.experiments]
        exp = next((e for e in cfg.experiments if e.name == (experiment or names[0])), None)
        if exp is None:
            raise ValueError(f"{run_dir}: no experiment {experiment!r}; it has {names}")
        weights = experiment_dir(run_dir, exp.name) / f"{method}.safetensors"
        if not weights.exists():
            raise FileNotFoundError(f"{weights}: no trained {method!r} model in this run")
        # The memory is rebuilt from the content-addressed cache the run filled (seconds).
        prep = prepare(cfg, exp, Path(cache_dir or default_cache_dir()), progress=False, stage="memory")
        model = build_model(method, exp, prep.memory.dim, prep.memory.value_dim, prep.num_classes)
        model.load_state_dict(load_file(str(weights)))
        model.eval()
        index = create_index(exp.retrieval.index, prep.memory.dim)
        index.add(prep.memory.keys)
        return cls(cfg, exp, method, create_image_encoder(cfg.encoder), prep.memory, index, model,
                   list(prep.train.dataset.class_names))

    @torch.no_grad()
    def predict(self, images, top_classes: int = 5, top_neighbors: int = 10) -> list[dict]:
        """For each PIL image: top classes with probabilities and the most-attended neighbours."""
        if self.method == "rac":
            raise ValueError("predict supports the methods that read keys/values per neighbour, not rac")
        pixels = np.stack([self.encoder.preprocess(im) for im in images])
        z = self.encoder.encode_pixels(pixels)  # (B, d)
        k = min(self.experiment.retrieval.k, len(self.memory))
        D, I = search_neighbors(self.index, z, k)
        keys = torch.from_numpy(self.memory.keys[I])  # (B, k, d)
        values = torch.from_numpy(self.memory.values[I])  # (B, k, d')
        logits, attn = self.model(torch.from_numpy(z), keys, values)
        probs = logits.softmax(-1).numpy()
        last = attn[:, -1].numpy() if attn.shape[1] else np.full(I.shape, 1.0 / k)  # (B, k)
        out = []
        for b in range(len(images)):
            top = np.argsort(-probs[b])[:top_classes]
            order = np.argsort(-last[b], kind="stable")[:top_neighbors]
            out.append({
                "top5": [{"class": self.class_names[c], "probability": float(probs[b, c])} for c in top],
                "neighbors": [{
                    "memory_id": self.memory.ids[I[b, j]],
                    "source": self.memory.sources[I[b, j]],
                    "text": self.memory.texts[I[b, j]],
                    "rank": int(j) + 1,
                    "similarity": float(D[b, j]),
                    "weight": float(last[b, j]),
                } for j in order],
            })
        return out
