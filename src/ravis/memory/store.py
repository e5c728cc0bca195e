"""The memory: keys (image embeddings), values (text or image embeddings) and metadata.

On disk a memory is a folder: ``keys.npy``, ``values.npy``, ``labels.npy`` (numpy, no
pickle), ``meta.parquet`` (id, text, source per entry) and ``manifest.json`` (encoders,
dimensions, counts, checksums). Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import load_json, load_npy, save_json, save_npy, stable_hash

FORMAT_VERSION = 1


class MemoryMismatchError(ValueError):
    """A memory that cannot serve a query encoder, or whose files disagree."""


@dataclass
class Memory:
    """An image-text memory held in RAM."""

    keys: np.ndarray  # (M, d) float32, unit rows: the query encoder's embeddings of the images
    values: np.ndarray  # (M, d') float32: text embeddings (or a second image encoder's)
    labels: np.ndarray  # (M,) int64 class index, -1 where an entry has no known class
    texts: list[str]  # (M,) caption or label text: what RAC concatenates and predict shows
    ids: list[str]  # (M,) entry ids, unique within the memory
    sources: list[str]  # (M,) which collection each entry came from
    key_encoder: str  # fingerprint of the encoder that made the keys
    value_encoder: str  # fingerprint of the encoder that made the values
    class_names: list[str] = field(default_factory=list)
    # (source spec, rows) of each part when the memory is composed of several (in order)
    parts: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        m = len(self.keys)
        lengths = {"values": len(self.values), "labels": len(self.labels), "texts": len(self.texts),
                   "ids": len(self.ids), "sources": len(self.sources)}
        bad = {k: v for k, v in lengths.items() if v != m}
        if bad:
            raise MemoryMismatchError(f"memory has {m} keys but {bad}")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.keys.shape[1])

    @property
    def value_dim(self) -> int:
        return int(self.values.shape[1])

    @property
    def fingerprint(self) -> str:
        """Content hash: neighbour caches are keyed by it."""
        return stable_hash(self.keys, self.values, self.labels, self.texts, self.ids)

    def check_query_encoder(self, encoder_fingerprint: str, dim: int) -> None:
        """Refuses a query encoder whose embeddings do not live in this memory's key space."""
        if dim != self.dim:
            raise MemoryMismatchError(
                f"memory keys are {self.dim}-d but the query encoder gives {dim}-d embeddings")
        if encoder_fingerprint != self.key_encoder:
            raise MemoryMismatchError(
                f"memory keys were made by {self.key_encoder!r}, not by the query encoder "
                f"{encoder_fingerprint!r}: neighbours would be meaningless")

    def save(self, folder: Path | str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..io import atomic_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_npy(folder / "keys.npy", self.keys.astype(np.float32))
        save_npy(folder / "values.npy", self.values.astype(np.float32))
        save_npy(folder / "labels.npy", self.labels)
        table = pa.table({"id": self.ids, "text": self.texts, "source": self.sources})
        with atomic_path(folder / "meta.parquet") as tmp:
            pq.write_table(table, tmp)
        save_json(folder / "manifest.json", {
            "format": FORMAT_VERSION, "count": len(self), "dim": self.dim,
            "value_dim": self.value_dim, "key_encoder": self.key_encoder,
            "value_encoder": self.value_encoder, "class_names": self.class_names,
            "checksums": {"keys": stable_hash(self.keys), "values": stable_hash(self.values),
                          "labels": stable_hash(self.labels)},
        })

    @classmethod
    def load(cls, folder: Path | str) -> "Memory":
        import pyarrow.parquet as pq

        folder = Path(folder)
        if not (folder / "manifest.json").exists():
            raise FileNotFoundError(f"{folder}: not a ravis memory (no manifest.json)")
        manifest = load_json(folder / "manifest.json")
        arrays = {name: load_npy(folder / f"{name}.npy") for name in ("keys", "values", "labels")}
        for name, arr in arrays.items():
            if stable_hash(arr) != manifest["checksums"][name]:
                raise MemoryMismatchError(f"{folder / (name + '.npy')}: checksum mismatch, "
                                          "the file is corrupt or was changed")
        if arrays["keys"].shape != (manifest["count"], manifest["dim"]):
            raise MemoryMismatchError(f"{folder / 'keys.npy'}: shape {arrays['keys'].shape} "
                                      f"disagrees with manifest ({manifest['count']}, {manifest['dim']})")
        meta = pq.read_table(folder / "meta.parquet").to_pydict()
        return cls(keys=arrays["keys"], values=arrays["values"], labels=arrays["labels"],
                   texts=meta["text"], ids=meta["id"], sources=meta["source"],
                   key_encoder=manifest["key_encoder"], value_encoder=manifest["value_encoder"],
                   class_names=manifest["class_names"])
