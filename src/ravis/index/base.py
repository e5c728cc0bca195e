"""The k-NN index interface shared by every backend, and the helpers backends share.

Every backend scores by inner product. Callers store and query L2-normalised vectors, so
that a score is the cosine similarity, as in the paper's retrieval step.

On disk an index is a folder: ``index.json`` (spec, d, ntotal, search parameters, info, and
``files``: the sha256 and size of every file the loader reads) beside the backend's files
(``.npy`` with ``allow_pickle=False``, faiss or ScaNN files). The JSON is written last, so a
folder without it is an unfinished save; loading checks every recorded file, so a flipped
byte or a truncated copy is refused by name instead of returning wrong neighbours.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ravis.io import VerifiedStamps, load_json, save_json, sha256_file
from ravis.errors import InputError

log = logging.getLogger(__name__)

META_NAME = "index.json"
STAMPS_NAME = ".verified.json"  # index files already hashed OK (see ravis.io.VerifiedStamps)


class IndexFileError(InputError):
    """A file of a saved index is missing, truncated or corrupt; the message names it."""


@runtime_checkable
class Index(Protocol):
    """A store of nb vectors of dimension d, searched by inner product.

    Backends are built by :func:`ravis.index.create_index` from a factory string and
    reloaded by :func:`ravis.index.load_index`; ``spec`` is the string that built them.
    Exact backends have nothing to train (``is_trained`` is True, ``train`` does nothing)
    and no search parameters (``set_search_params`` refuses any).

    """

    spec: str
    d: int
    #: index.json's record of the files it was saved to or loaded from ({name: {sha256,
    #: bytes}}), so that what is computed from it (cached neighbours) is keyed on its bytes;
    #: {} for an index that lives only in RAM. Set by ``save`` and ``load``.
    saved_files: dict
    #: How the index was chosen, built and tuned; saved in index.json and restored by load.
    info: dict
    #: Exact float32 rows by id (e.g. a KeyShards over the memory's keys), given to the
    #: constructor or loader: compressed backends use it to reconstruct exactly and rescore.
    #: None where the index keeps exact vectors itself or none were given.
    vectors: Callable[[np.ndarray], np.ndarray] | None

    @property
    def ntotal(self) -> int:
        """Number of stored vectors nb."""
        ...

    @property
    def is_trained(self) -> bool:
        """Whether :meth:`add` may be called (quantizers trained, or none needed)."""
        ...

    def train(self, xb: np.ndarray) -> None:
        """Trains the quantizers on a sample xb (n, d); does nothing for exact backends."""
        ...

    @property
    def search_params(self) -> dict:
        """The search parameters set (e.g. ``{"nprobe": 32}``); saved with the index."""
        ...

    def set_search_params(self, **params) -> None:
        """Sets search parameters; raises ValueError naming any the backend does not know."""
        ...

    def add(self, xb: np.ndarray) -> None:
        """Appends xb (nb, d); the new vectors get the next ids."""
        ...

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best vectors for each query.

        Args:
            xq: (nq, d) queries.
            k: neighbours per query.

        Returns:
            D (nq, k) float32 scores, best first, and I (nq, k) int64 ids. Where fewer than
            k vectors exist, I is -1 and D is -inf.
        """
        ...

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors (len(ids), d) for ids. Exact backends return them bit for bit;
        compressed ones (a later PQ backend) return their approximation."""
        ...

    def save(self, path: Path | str) -> None:
        """Writes the index into the folder ``path``, index.json (with checksums) last."""
        ...

    @classmethod
    def load(cls, path: Path | str, *, vectors=None, mmap: bool = False) -> "Index":
        """Reads an index written by :meth:`save`, after checking its files (see
        :func:`verify_files`). ``mmap`` maps large files instead of reading them, where
        the backend can."""
        ...


class ExactBackend:
    """The :class:`Index` members every exact backend has alike: nothing to train, no
    search parameters, and exact vectors of its own (``vectors`` stays None)."""

    vectors = None

    @property
    def is_trained(self) -> bool:
        return True

    def train(self, xb) -> None:
        """Nothing to train; accepted so that callers need not tell exact from approximate."""

    @property
    def search_params(self) -> dict:
        return {}

    def set_search_params(self, **params) -> None:
        if params:
            raise InputError(f"index {self.spec!r} takes no search parameters (got {sorted(params)})")


def as_vectors(x, d: int, name: str = "x") -> np.ndarray:
    """x as a C-contiguous float32 (n, d) array, without a copy when it already is one."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != d:
        raise InputError(f"{name}: expected shape (n, {d}), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_ids(ids, ntotal: int) -> np.ndarray:
    """ids as int64, refusing any outside [0, ntotal)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= ntotal):
        raise IndexError(f"ids out of range [0, {ntotal})")
    return ids


def no_results(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What searching an empty index returns: -inf scores and -1 ids, (nq, k)."""
    return pad_results(np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), k)


def pad_results(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widens (nq, k') results to k columns with -inf / -1 (the index had k' < k vectors)."""
    nq, kk = I.shape
    if kk == k:
        return D, I
    Dp = np.full((nq, k), -np.inf, dtype=np.float32)
    Ip = np.full((nq, k), -1, dtype=np.int64)
    Dp[:, :kk], Ip[:, :kk] = D, I
    return Dp, Ip


def file_records(path: Path | str, names: Sequence[str], reuse: dict | None = None) -> dict:
    """{name: {sha256, bytes}} of the files ``names`` (relative to the folder ``path``);
    ``reuse``: earlier records, kept for files whose size has not changed."""
    out = {}
    for name in names:
        size = (Path(path) / name).stat().st_size
        old = (reuse or {}).get(name)
        out[name] = old if old and old["bytes"] == size else {
            "sha256": sha256_file(Path(path) / name), "bytes": size}
    return out


def write_meta(path: Path | str, spec: str, d: int, ntotal: int, files: Sequence[str] = (), *,
               reuse: bool = False, **extra) -> dict:
    """Writes index.json, which marks the save complete and so must come after every file;
    returns its record of the files (the index's ``saved_files``).

    Args:
        files: paths, relative to ``path``, of every file the loader reads; their sha256
            and size are recorded for :func:`verify_files`.
        reuse: keep the records of the index.json being replaced for files of unchanged
            size: the caller rewrites the JSON alone (search parameters, info), and hashing
            a many-GB index again for that would take minutes.
    """
    old = None
    if reuse and (Path(path) / META_NAME).is_file():
        old = load_json(Path(path) / META_NAME).get("files")
    records = file_records(path, files, old)
    save_json(Path(path) / META_NAME, {"spec": spec, "d": d, "ntotal": ntotal, "files": records, **extra})
    return records


def verify_files(path: Path | str, meta: dict, *, stamps: bool = True) -> int:
    """Checks every file index.json records: present, of its recorded size, and of its
    sha256. With ``stamps``, a file unchanged (size, mtime, inode) since it last hashed
    right is not hashed again (see :class:`ravis.io.VerifiedStamps`); without, every file
    is re-read. Returns how many files were checked.

    Raises:
        IndexFileError: naming the first missing, truncated or corrupt file.
    """
    path = Path(path)
    if "files" not in meta:  # saved before checksums were recorded
        log.warning("%s: no checksums recorded (an index saved by an older ravis); damaged "
                    "files cannot be detected until it is saved again", path / META_NAME)
        return 0
    seen = VerifiedStamps(path / STAMPS_NAME)
    try:
        for name, record in meta["files"].items():
            file = path / name
            if not file.is_file():
                raise IndexFileError(f"{file}: missing (listed in {META_NAME})")
            size = file.stat().st_size
            if size != record["bytes"]:
                raise IndexFileError(f"{file}: {size} bytes, {META_NAME} says {record['bytes']} "
                                     f"(truncated or replaced)")
            if not seen.matches(file, record["sha256"], trust_stamps=stamps):
                raise IndexFileError(f"{file}: sha256 differs from {META_NAME}; the file is "
                                     f"corrupt or was changed")
    finally:
        seen.save()  # the files that did hash right need not be hashed on the next open
    return len(meta["files"])


def open_meta(path: Path | str) -> dict:
    """index.json of a saved index whose files passed :func:`verify_files`: what every
    backend's ``load`` starts with."""
    meta = read_meta(path)
    verify_files(path, meta)
    return meta


def read_meta(path: Path | str) -> dict:
    """The JSON sidecar of a saved index, with a clear error when it is missing or malformed."""
    meta_path = Path(path) / META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no saved index here (missing {META_NAME})")
    meta = load_json(meta_path)
    missing = {"spec", "d", "ntotal"} - set(meta) if isinstance(meta, dict) else {"spec", "d", "ntotal"}
    if missing:
        raise InputError(f"{meta_path}: missing fields {sorted(missing)}")
    return meta


def check_loaded(path: Path | str, meta: dict, xb: np.ndarray) -> None:
    """The stored array must match its sidecar (a save interrupted between files would not)."""
    if xb.ndim != 2 or xb.shape != (meta["ntotal"], meta["d"]) or xb.dtype != np.float32:
        raise InputError(
            f"{path}: vectors {xb.dtype}{xb.shape} do not match {META_NAME} "
            f"(ntotal={meta['ntotal']}, d={meta['d']}, float32)"
        )
