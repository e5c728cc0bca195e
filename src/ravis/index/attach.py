"""An index built elsewhere (autofaiss's ``knn.index``, a faiss script) made a memory's index.

    index = attach_faiss("knn.index", KeyShards(key_paths), "MEMDIR/index", target_recall=0.95)

The file is checked against the memory's keys (dimension, row count, inner-product metric),
hard-linked or copied into the folder as ``index.faiss``, and its search parameters (nprobe,
efSearch, ...) are tuned against exact search on held-out memory rows exactly as for an
index ravis built; index.json, written last, records the tuning, the file's checksum and
what autofaiss wrote about it (``infos.json`` beside the file).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import faiss

from ..config import RetrievalConfig
from ..errors import InputError
from ..io import link_or_copy, load_json
from .base import META_NAME
from .build import KeyShards, _tune, clear_build_files, sample_rows
from .choose import IndexChoice
from .faiss_index import INDEX_NAME, FaissIndex

log = logging.getLogger(__name__)

INFOS_NAME = "infos.json"  # autofaiss's description of the index it built


def attach_faiss(file: Path | str, vectors: KeyShards, folder: Path | str, *,
                 target_recall: float = RetrievalConfig.target_recall,
                 k: int = RetrievalConfig.k, num_queries: int = 1000,
                 seed: int = 0) -> FaissIndex:
    """Makes the faiss index ``file`` the index over ``vectors``, saved in ``folder`` (see
    the module doc); returns it tuned, with ``vectors`` attached.

    Raises:
        ValueError: naming ``file`` when it is unreadable, of another dimension or size than
            the memory, or not an inner-product index.
    """
    file, folder = Path(file), Path(folder)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such faiss index file")
    infos = load_json(file.parent / INFOS_NAME) if (file.parent / INFOS_NAME).is_file() else {}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{INDEX_NAME}.attaching"
    linked = link_or_copy(file, tmp)
    try:
        index = _read_checked(tmp, file, vectors)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    (folder / META_NAME).unlink(missing_ok=True)  # unfinished until index.json is written again
    clear_build_files(folder)  # an earlier build's files would be read as this index's
    os.replace(tmp, folder / INDEX_NAME)  # the mapped index keeps reading the same inode
    choice, hnsw_coarse = describe(index, file, infos)
    out = FaissIndex(vectors.d, choice.factory, index=index, vectors=vectors)
    _, query_ids = sample_rows(vectors.n, 0, num_queries, seed)  # any rows: autofaiss's sample is unknown
    tuning = _tune(out, vectors, folder, choice, query_ids, k, target_recall, hnsw_coarse)
    out.info = {"choice": choice.to_dict(), "tuning": tuning, "shards": vectors.names, "rows": vectors.rows,
                "attached": {"source": str(file.resolve()), "linked": linked, "infos": infos},
                "bytes_on_disk": {INDEX_NAME: (folder / INDEX_NAME).stat().st_size}}
    out.save_meta(folder)  # index.json last, with the checksum of index.faiss
    log.info("attached %s as %s: recall@%d %.3f", file, folder, tuning["k"], tuning["recall_heldout"])
    return out




def _read_checked(path: Path, file: Path, vectors: KeyShards):
    """The faiss index at ``path`` (a copy of ``file``), mapped where faiss can, checked
    against the memory's keys; errors name ``file``."""
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        raise InputError(f"{file}: not a readable faiss index ({str(e).strip().splitlines()[-1]})") from None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        metric = {faiss.METRIC_L2: "L2"}.get(index.metric_type, f"number {index.metric_type}")
        raise InputError(f"{file}: the index compares vectors by metric {metric}, ravis by inner "
                         f"product; build it with faiss.METRIC_INNER_PRODUCT (autofaiss: --metric_type=ip)")
    if index.d != vectors.d or index.ntotal != vectors.n:
        raise InputError(f"{file}: holds {index.ntotal} vectors of dimension {index.d}, the memory "
                         f"{vectors.n} keys of dimension {vectors.d}")
    return index


def describe(index, file: Path, infos: dict) -> tuple[IndexChoice, bool]:
    """The index family tuning needs (which parameters to climb), read from the faiss object,
    and whether its IVF coarse quantizer is an HNSW graph (its efSearch must follow nprobe).
    The factory string is autofaiss's ``index_key`` when infos.json gives it."""
    top, ivf = faiss.downcast_index(index), faiss.try_extract_index_ivf(index)
    nlist, hnsw_coarse = 0, False
    if ivf is not None:
        ivf, nlist = faiss.downcast_index(ivf), ivf.nlist
        family = ("ivf-fs" if isinstance(top, faiss.IndexRefine)  # tuned with k_factor_rf
                  else "ivf-pq" if "PQ" in type(ivf).__name__ else "ivf-flat")
        hnsw_coarse = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
    else:
        family = ("hnsw" if isinstance(top, faiss.IndexHNSW)
                  else "flat" if isinstance(top, faiss.IndexFlat) else "other")
    factory = infos.get("index_key") or type(top).__name__
    choice = IndexChoice(factory, family, nlist, os.path.getsize(file), 0, f"attached from {file}")
    return choice, hnsw_coarse
