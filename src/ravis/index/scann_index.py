"""ScaNN (Google's approximate search, the paper's choice) behind the ravis Index protocol.

ScaNN builds from the whole dataset at once: vectors added before the first search are
collected, and the searcher is built then; adding after that needs a rebuild. The spec is
``scann:leaves=2000,reorder=float32|int8,dims_per_block=2,threshold=0.2`` (all optional);
the configuration follows ScaNN's README: a k-means tree, anisotropic 4-bit hashing, then
exact (or int8) rescoring of the best candidates.

Saved, the searcher is the folder ``scann/`` (ScaNN's own files), every file of it
checksummed in index.json.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from .base import as_vectors, check_ids, check_k, no_results, open_meta, pad_results, write_meta

ASSETS = "scann"
DEFAULTS = {"leaves": 0, "reorder": "float32", "dims_per_block": 2, "threshold": 0.2, "reorder_k": 0}


def _options(text: str) -> dict:
    opts = dict(DEFAULTS)
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in DEFAULTS:
            raise InputError(f"unknown ScaNN option {name!r} in {text!r}; known: {sorted(DEFAULTS)}")
        if name == "reorder":
            opts[name] = value
            continue
        try:
            opts[name] = type(DEFAULTS[name])(float(value))
        except ValueError:
            raise InputError(f"ScaNN option {name!r} in {text!r} needs a number, e.g. {name}={DEFAULTS[name]}") from None
    if opts["reorder"] not in ("float32", "int8"):
        raise InputError(f"ScaNN reorder must be float32 or int8, got {opts['reorder']!r}")
    return opts


class ScannIndex:
    """ScaNN over inner product. ``vectors`` (exact rows by id, e.g. the memory's key shards)
    lets :meth:`reconstruct` answer: ScaNN does not give its vectors back."""

    def __init__(self, d: int, options: str = "", *, vectors=None):
        self.d, self.options = int(d), _options(options)
        self.spec = "scann" + (f":{options}" if options else "")
        self.searcher = None
        self._pending: list[np.ndarray] = []
        self._n = 0
        self._search_params: dict = {}
        self.info: dict = {}
        self.saved_files: dict = {}  # lives in RAM until saved
        self.vectors = vectors

    @classmethod
    def from_spec(cls, d: int, options: str = "") -> "ScannIndex":
        return cls(d, options)

    @property
    def ntotal(self) -> int:
        return self._n

    @property
    def is_trained(self) -> bool:
        """ScaNN trains while it builds (on the first search or save), from what was added."""
        return True

    def train(self, xb) -> None:
        """Nothing to do: :meth:`build` trains the tree and the quantizer on the data."""

    @property
    def search_params(self) -> dict:
        return self._search_params

    @property
    def num_leaves(self) -> int:
        return self.options["leaves"] or max(1, min(int(math.sqrt(self._n)), self._n // 50 or 1))

    def add(self, xb) -> None:
        if self.searcher is not None:
            raise ValueError("a built ScaNN index cannot take more vectors; build a new one")  # a call-order bug
        xb = as_vectors(xb, self.d, "xb")
        self._pending.append(xb)
        self._n += len(xb)

    def build(self, threads: int = 0) -> None:
        import scann
        from scann.scann_ops.py.scann_builder import ReorderType

        db = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = []
        o, k = self.options, 100
        leaves = self.num_leaves
        builder = scann.scann_ops_pybind.builder(db, k, "dot_product").tree(
            num_leaves=leaves, num_leaves_to_search=max(1, leaves // 20),
            training_sample_size=min(len(db), 250_000)).score_ah(
            o["dims_per_block"], anisotropic_quantization_threshold=o["threshold"])
        reorder_type = ReorderType.INT8 if o["reorder"] == "int8" else ReorderType.FLOAT32
        builder = builder.reorder(o["reorder_k"] or 4 * k, quantize=reorder_type)
        if threads:
            builder = builder.set_n_training_threads(threads)
        self.searcher = builder.build()

    def set_search_params(self, **params) -> None:
        unknown = set(params) - {"leaves_to_search", "pre_reorder_num_neighbors"}
        if unknown:
            raise InputError(f"ScaNN has no search parameter {sorted(unknown)}")
        self._search_params.update({k: int(v) for k, v in params.items()})

    def search(self, xq, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq, k = as_vectors(xq, self.d, "xq"), check_k(k)
        if self._n == 0:
            return no_results(len(xq), k)
        if self.searcher is None:
            self.build()
        pre = self.search_params.get("pre_reorder_num_neighbors") or max(k, self.options["reorder_k"] or 4 * k)
        I, D = self.searcher.search_batched_parallel(
            xq, final_num_neighbors=k, pre_reorder_num_neighbors=max(pre, k),
            leaves_to_search=self.search_params.get("leaves_to_search"))
        I, D = np.asarray(I, dtype=np.int64), np.asarray(D, dtype=np.float32)
        return pad_results(np.where(I >= 0, D, -np.inf).astype(np.float32), I, k)

    def reconstruct(self, ids) -> np.ndarray:
        if self.vectors is None:
            raise InputError("a ScaNN index does not give back its vectors; pass vectors= to the "
                             "constructor or load_index")
        ids = check_ids(ids, self.ntotal)
        return np.asarray(self.vectors(ids), dtype=np.float32).reshape(len(ids), self.d)

    def save(self, path: Path | str) -> None:
        import os
        import shutil

        path = Path(path)
        if self.searcher is None:
            self.build()
        tmp = path / (ASSETS + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.searcher.serialize(str(tmp), relative_path=True)
        shutil.rmtree(path / ASSETS, ignore_errors=True)
        os.replace(tmp, path / ASSETS)
        self._write_meta(path, reuse=False)

    def save_meta(self, path: Path | str) -> None:
        """Rewrites index.json alone, keeping the checksums of the unchanged ScaNN files."""
        self._write_meta(path, reuse=True)

    def _write_meta(self, path: Path, reuse: bool) -> None:
        files = sorted(f.relative_to(path).as_posix() for f in (Path(path) / ASSETS).rglob("*")
                       if f.is_file())
        self.saved_files = write_meta(path, self.spec, self.d, self.ntotal, files, reuse=reuse,
                                      search_params=self.search_params, info=self.info, num_leaves=self.num_leaves)

    @classmethod
    def load(cls, path: Path | str, *, vectors=None, mmap: bool = False) -> "ScannIndex":
        """Reads a saved searcher, after checking its files (``mmap`` is accepted for the
        protocol's sake: ScaNN reads its files into RAM)."""
        import scann

        path = Path(path)
        meta = open_meta(path)
        out = cls(meta["d"], meta["spec"].partition(":")[2], vectors=vectors)
        out.searcher = scann.scann_ops_pybind.load_searcher(str(path / ASSETS))
        out._n = meta["ntotal"]
        out.options["leaves"] = meta["num_leaves"]
        out.set_search_params(**meta.get("search_params", {}))
        out.info = meta.get("info", {})
        out.saved_files = meta.get("files", {})
        return out
