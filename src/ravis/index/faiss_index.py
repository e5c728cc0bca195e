"""faiss backends: the flat (exact) inner-product index, the reference ExactIndex is measured
against, and any faiss factory string (IVF, HNSW, SQ, OPQ+PQ) with its search parameters."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from ravis.io import atomic_path, load_npy, quiet_native, save_npy

from ..errors import InputError
from .base import (ExactBackend, as_vectors, check_ids, check_k, check_loaded, no_results, open_meta,
                   pad_results, write_meta)

XB_NAME = "xb.npy"


class FaissFlatIndex(ExactBackend):
    """faiss ``IndexFlatIP``: exact search with faiss's BLAS blocks and heaps."""

    def __init__(self, d: int):
        self.spec, self.d = "faiss-flat", int(d)
        self.index = faiss.IndexFlatIP(self.d)
        self.info: dict = {}
        self.saved_files: dict = {}  # lives in RAM until saved

    @classmethod
    def from_spec(cls, d: int, options: str = "") -> "FaissFlatIndex":
        if options:
            raise InputError(f"'faiss-flat' takes no options, got {options!r}")
        return cls(d)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, xb) -> None:
        self.index.add(as_vectors(xb, self.d, "xb"))

    def reconstruct(self, ids) -> np.ndarray:
        ids = check_ids(ids, self.ntotal)
        return self.index.reconstruct_batch(ids).reshape(len(ids), self.d)

    def search(self, xq, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq, k = as_vectors(xq, self.d, "xq"), check_k(k)
        if self.ntotal == 0:
            return no_results(len(xq), k)
        D, I = self.index.search(xq, k)
        D[I < 0] = -np.inf  # faiss pads with -FLT_MAX; ravis pads with -inf
        return D, I.astype(np.int64, copy=False)

    def _vectors(self) -> np.ndarray:
        """A copy of the stored vectors (nb, d)."""
        if self.ntotal == 0:
            return np.zeros((0, self.d), dtype=np.float32)
        flat = faiss.rev_swig_ptr(self.index.get_xb(), self.ntotal * self.d)
        return np.array(flat, dtype=np.float32).reshape(self.ntotal, self.d)

    def save(self, path: Path | str) -> None:
        # .npy rather than faiss.write_index, so every flat backend shares one plain format.
        path = Path(path)
        save_npy(path / XB_NAME, self._vectors())
        self.saved_files = write_meta(path, self.spec, self.d, self.ntotal, [XB_NAME], info=self.info)

    @classmethod
    def load(cls, path: Path | str, *, vectors=None, mmap: bool = False) -> "FaissFlatIndex":
        """Reads the vectors into faiss (``vectors`` and ``mmap`` are accepted for the
        protocol's sake: faiss keeps a flat index's vectors in RAM)."""
        meta = open_meta(path)
        xb = load_npy(Path(path) / XB_NAME)
        check_loaded(Path(path) / XB_NAME, meta, xb)
        index = cls(meta["d"])
        index.add(xb)
        index.info = meta.get("info", {})
        index.saved_files = meta.get("files", {})
        return index


INDEX_NAME = "index.faiss"
IVFDATA_NAME = "index.ivfdata"


class FaissIndex:
    """Any faiss index built from a factory string: ``faiss:IVF1024,Flat``, ``faiss:HNSW32,Flat``,
    ``faiss:IVF4096,SQ8``, ``faiss:OPQ64_256,IVF65536_HNSW32,PQ64``.

    Search parameters (``nprobe``, ``efSearch``, ``quantizer_efSearch``, ...) live in
    ``search_params``; they are applied to the faiss object, saved in ``index.json`` and
    restored by :meth:`load`, so a tuned index never comes back with faiss's defaults.

    Compressed indexes cannot give back their vectors exactly; ``vectors`` (a callable from
    ids to float32 rows, e.g. a reader over the memory's key shards) makes :meth:`reconstruct`
    exact again, which the self-duplicate exclusion needs, and enables the ravis-level search
    parameter ``rerank=r``: fetch r*k candidates from the compressed codes, then rescore them
    exactly with the stored vectors (ScaNN's reordering, without keeping floats in RAM: the
    key shards are memory-mapped).

    Args:
        d: vector dimension.
        factory: the faiss factory string (``index``, when given, was built from it).
        index: an existing faiss index to wrap instead of building an empty one.
        vectors: the exact vectors, see above.
    """

    def __init__(self, d: int, factory: str, index=None, *, vectors=None):
        self.d, self.factory = int(d), factory
        self.spec = f"faiss:{factory}"
        self.index = index if index is not None else faiss.index_factory(
            self.d, factory, faiss.METRIC_INNER_PRODUCT)
        self._search_params: dict[str, float] = {}
        self.info: dict = {}  # how the index was chosen and tuned; saved beside it
        self.saved_files: dict = {}  # lives in RAM until saved
        self.vectors = vectors

    @property
    def search_params(self) -> dict:
        return self._search_params

    @classmethod
    def from_spec(cls, d: int, options: str) -> "FaissIndex":
        if not options:
            raise InputError("'faiss' needs a factory string, e.g. 'faiss:IVF1024,Flat'")
        try:
            return cls(d, options)
        except RuntimeError as e:
            raise InputError(f"faiss cannot build {options!r}: {str(e).strip().splitlines()[-1]}") from None

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def is_trained(self) -> bool:
        return self.index.is_trained

    def train(self, x) -> None:
        self.index.train(as_vectors(x, self.d, "training vectors"))

    def add(self, xb) -> None:
        if not self.index.is_trained:
            raise ValueError(f"{self.spec}: train the index before adding vectors")  # a call-order bug
        self.index.add(as_vectors(xb, self.d, "xb"))

    def set_search_params(self, **params) -> None:
        """Sets e.g. nprobe=32 or efSearch=128 (names as faiss.ParameterSpace knows them),
        or rerank=4 (see the class doc)."""
        space = faiss.ParameterSpace()
        for name, value in params.items():
            if name == "rerank":
                if int(value) < 1:
                    raise InputError(f"{self.spec}: rerank must be >= 1, got {value}")
                self._search_params[name] = int(value)
                continue
            try:
                space.set_index_parameter(self.index, name, value)
            except RuntimeError as e:
                raise InputError(f"{self.spec}: cannot set {name}={value}: {str(e).strip()}") from None
            self._search_params[name] = value

    def search(self, xq, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq, k = as_vectors(xq, self.d, "xq"), check_k(k)
        if self.ntotal == 0:
            return no_results(len(xq), k)
        rerank = self.search_params.get("rerank", 1)
        if rerank > 1 and self.vectors is None:
            raise InputError(f"{self.spec}: rerank needs the stored vectors (pass vectors= to the "
                             f"constructor or load_index)")
        D, I = self.index.search(xq, min(k * rerank, self.ntotal) if rerank > 1 else k)
        if rerank > 1:
            D, I = self._rescore(xq, I, k)
        D[I < 0] = -np.inf
        return pad_results(D, I.astype(np.int64, copy=False), k)

    def _rescore(self, xq: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidates I (nq, k') from the stored vectors; the best k."""
        flat = I.ravel()
        ok = flat >= 0
        x = self.vectors(flat[ok])  # (m, d)
        scores = np.full(flat.shape, -np.inf, dtype=np.float32)
        rows = np.repeat(np.arange(len(xq)), I.shape[1])[ok]
        scores[ok] = np.einsum("md,md->m", x, xq[rows])
        scores = scores.reshape(I.shape)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(I, order, axis=1)

    def reconstruct(self, ids) -> np.ndarray:
        ids = check_ids(ids, self.ntotal)
        if self.vectors is not None:
            return np.asarray(self.vectors(ids), dtype=np.float32).reshape(len(ids), self.d)
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and not ivf.direct_map.type:
            ivf.make_direct_map()
        return self.index.reconstruct_batch(ids).reshape(len(ids), self.d)

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / INDEX_NAME) as tmp:
            faiss.write_index(self.index, str(tmp))
        self._write_meta(path, reuse=False)

    def save_meta(self, path: Path | str) -> None:
        """Rewrites index.json alone (search parameters and info changed, the index files did
        not: their recorded checksums are kept, or made if there are none yet)."""
        self._write_meta(path, reuse=True)

    def _write_meta(self, path: Path, reuse: bool) -> None:
        files = [n for n in (INDEX_NAME, IVFDATA_NAME) if (Path(path) / n).exists()]
        self.saved_files = write_meta(path, self.spec, self.d, self.ntotal, files, reuse=reuse,
                                      search_params=self.search_params, info=self.info)

    @classmethod
    def load(cls, path: Path | str, *, vectors=None, mmap: bool = False) -> "FaissIndex":
        """Reads a saved index (after checking its files) and restores its search parameters
        and info. ``mmap`` maps the inverted lists instead of reading them; an index merged
        on disk (``index.ivfdata``) is always mapped, so an index larger than RAM can be
        searched. ``vectors``: see the class doc."""
        path = Path(path)
        meta = open_meta(path)
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR
        if mmap and not (path / IVFDATA_NAME).exists():  # on-disk lists are mapped already;
            flags |= faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY  # mapping them twice crashes
        file = path / INDEX_NAME
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing (the index folder is incomplete)")
        try:
            with quiet_native():  # faiss says where it found the on-disk lists
                index = faiss.read_index(str(file), flags)
        except RuntimeError as e:
            raise InputError(f"{file}: not a readable faiss index ({str(e).strip().splitlines()[-1]})") from None
        if index.d != meta["d"] or index.ntotal != meta["ntotal"]:
            raise InputError(f"{file}: d={index.d}, ntotal={index.ntotal} disagree with index.json "
                             f"(d={meta['d']}, ntotal={meta['ntotal']})")
        out = cls(meta["d"], meta["spec"].partition(":")[2], index=index, vectors=vectors)
        out.set_search_params(**meta.get("search_params", {}))
        out.info = meta.get("info", {})
        out.saved_files = meta.get("files", {})
        return out
