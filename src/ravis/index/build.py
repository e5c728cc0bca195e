"""Building a memory's index shard by shard: choose, train, add, merge on disk, tune, save.

    index = index_over(KeyShards(key_paths), spec, folder, budget="16G", target_recall=0.95)
    index = build_index(key_shards, "MEMDIR/index", budget="16G", target_recall=0.95)

:func:`index_over` is the one entry point for an index over a memory's keys: exact specs are
filled in RAM, approximate ones are built here (or loaded when already built).

Steps, each leaving a file so that a killed build resumes where it stopped and finishes
with the same index (the sample is seeded and every file is written then renamed):

    plan.json            the chosen factory string, sample seed, shard sizes
    trained.faiss        the quantizers (IVF, SQ, OPQ, PQ) trained on a sample     [IVF]
    blocks/NNNNN.faiss   one shard's vectors encoded into the trained index         [IVF]
    index.faiss          the index; IVF blocks are merged into on-disk inverted
    index.ivfdata        lists (index.ivfdata, memory-mapped when searched)        [IVF]
    tune/                the held-out queries and their exact neighbours
    index.json           written last: spec, search parameters, how they were tuned,
                         the sha256 and size of every file the loader reads
    .verified.json       files already hashed OK on open, by (size, mtime, inode)

Flat and HNSW indexes are built in RAM (they are only chosen when they fit the budget).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from ..cache import entry_lock
from ..config import RetrievalConfig
from ..errors import InputError
from ..io import atomic_path, load_json, load_npy, quiet_native, save_json, save_npy
from ..progress import progress_bar
from ..ray_tasks import run_tasks
from ..sizes import parse_bytes
from .base import META_NAME, STAMPS_NAME
from .choose import IndexChoice, choose_index
from .faiss_index import INDEX_NAME, IVFDATA_NAME, FaissIndex
from .multi import by_part, exact_search
from .tune import drop_self, measure, tune

log = logging.getLogger(__name__)

ADD_BATCH = 65_536
IVF_FAMILIES = ("ivf-flat", "ivf-sq8", "ivf-pq")  # merged into on-disk inverted lists
RAM_MERGED = ("ivf-fs",)  # fast-scan codes (SIMD blocks) cannot go on disk: merged in RAM
PLAN_NAME = "plan.json"
#: What a build leaves besides index.json: removed before a different index takes the folder.
BUILD_FILES = ("trained.faiss", "blocks", "tune", INDEX_NAME, IVFDATA_NAME, "scann", PLAN_NAME,
               STAMPS_NAME)


class KeyShards:
    """Key shards (arrays, memory maps or ``.npy`` paths) addressed by global row."""

    def __init__(self, shards: Sequence, names: Sequence[str] | None = None):
        self.sources = list(shards)
        self.arrays = [np.load(s, mmap_mode="r") if isinstance(s, (str, os.PathLike)) else s
                       for s in self.sources]
        self.names = list(names) if names is not None else [f"{i:05d}" for i in range(len(self.arrays))]
        dims = {a.shape[1] for a in self.arrays}
        if len(dims) != 1 or any(a.ndim != 2 for a in self.arrays):
            raise InputError(f"key shards disagree on dimension: "
                             f"{ {n: a.shape for n, a in zip(self.names, self.arrays)} }")
        self.d = dims.pop()
        self.rows = [len(a) for a in self.arrays]
        self.offsets = np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)
        self.n = int(self.offsets[-1])

    def __call__(self, ids) -> np.ndarray:
        """float32 rows for global ids, in the order given (reads sorted, per shard)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.d), dtype=np.float32)
        for s, pos, local in by_part(ids, self.offsets):
            order = np.argsort(local)
            out[pos[order]] = self.arrays[s][local[order]]
        return out


def sample_rows(n: int, train_rows: int, num_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (training rows, tuning query rows), sorted, from a seeded draw."""
    num_queries = min(num_queries, max(2, n // 10))
    train_rows = min(train_rows, n - num_queries)
    draw = np.random.default_rng(seed).choice(n, size=train_rows + num_queries, replace=False)
    return np.sort(draw[num_queries:]), np.sort(draw[:num_queries])


def is_approximate(spec: str) -> bool:
    """Whether ``spec`` is built, trained and tuned in a folder ('auto', 'scann[:options]',
    'faiss:<factory>' other than Flat) rather than filled in RAM ('exact', 'faiss-flat',
    'faiss:Flat')."""
    name = spec.partition(":")[0]
    return spec == "auto" or name == "scann" or (name == "faiss" and spec != "faiss:Flat")


def index_over(vectors, spec: str, folder: Path | str | None = None, *,
               budget: int | str = RetrievalConfig.budget,
               target_recall: float = RetrievalConfig.target_recall, k: int = RetrievalConfig.k,
               search_params: dict | None = None,
               progress: bool = False):
    """The index of ``spec`` over the memory keys ``vectors``: every verb and the library
    get their index here.

    Exact specs are filled in RAM, ADD_BATCH float32 rows at a time (``folder`` is not
    used: a flat index is rebuilt in seconds). Approximate ones ('auto': chosen for
    ``budget``; 'scann[:options]'; 'faiss:<factory>', trained where the factory needs it)
    are built, tuned to ``target_recall``@k on held-out rows and saved into ``folder`` by
    :func:`build_index`, or loaded from it when it holds a finished index of the same plan
    (the vectors' shard sizes, spec, budget, target and k), with ``vectors`` attached for
    exact reconstruction and rescoring.

    Args:
        vectors: a :class:`KeyShards` (or one (n, d) array).
        search_params: set last, in RAM only (e.g. ``{"nprobe": 16}``); an error names any
            parameter the backend does not take.
    """
    if not isinstance(vectors, KeyShards):
        vectors = KeyShards([vectors])
    if is_approximate(spec):
        index = _built_index(vectors, spec, folder, budget, target_recall, k, progress)
    else:
        from . import create_index

        index = create_index(spec, vectors.d)
        if not index.is_trained:  # a registered backend that trains but is not tuned
            index.train(vectors(np.arange(vectors.n)))
        _add_all(index, vectors, spec, progress)
    if search_params:
        index.set_search_params(**search_params)
    return index


def _built_index(keys: KeyShards, spec: str, folder, budget, target: float, k: int, progress: bool):
    if folder is None:
        raise ValueError(f"index {spec!r} is built and tuned on the memory: it needs a folder")  # a caller bug
    name, _, options = spec.partition(":")
    args = dict(budget=budget, target_recall=target, k=min(k, keys.n - 1),
                backend="scann" if name == "scann" else "faiss", factory=options or None)
    if name == "faiss":
        from . import create_index

        create_index(spec, keys.d)  # a bad factory string fails now, not after sampling
    folder = Path(folder)
    plan = _make_plan(keys, parse_bytes(budget), args["backend"], args["factory"], target, args["k"], 0)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(folder):  # one builder per cached index; a second run waits and loads it
        if (folder / META_NAME).is_file() and (folder / PLAN_NAME).is_file() and \
                load_json(folder / PLAN_NAME) == json.loads(json.dumps(plan)):
            from . import load_index

            return load_index(folder, vectors=keys, mmap=True)  # built before: reuse it
        return build_index(keys, folder, progress=progress, **args)


def build_index(shards, out: Path | str, *, budget: int | str = RetrievalConfig.budget,
                target_recall: float = RetrievalConfig.target_recall, k: int = RetrievalConfig.k,
                backend: str = "faiss",
                factory: str | None = None, names: Sequence[str] | None = None,
                num_queries: int = 1000, seed: int = 0, engine: str = "local",
                progress: bool = True):
    """Builds, tunes and saves the index of ``shards`` (a :class:`KeyShards`, or what it is
    made from) into the folder ``out``; returns it (memory-mapped where it was merged on
    disk) with the shards attached as its exact vectors. See the module doc for the steps."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = shards if isinstance(shards, KeyShards) else KeyShards(shards, names)
    if keys.n < 2:
        raise InputError("an index needs at least 2 vectors")
    (out / META_NAME).unlink(missing_ok=True)  # the index is being rebuilt: mark it unfinished first
    plan = _plan(keys, out, parse_bytes(budget), backend, factory, target_recall, k, seed)
    choice = IndexChoice(**plan["choice"])
    train_ids, query_ids = sample_rows(keys.n, max(choice.train_rows, 1), num_queries, seed)
    t0 = time.perf_counter()
    if backend == "scann":
        index = _build_scann(keys, out, choice.factory.partition(":")[2], progress)
    elif choice.family in IVF_FAMILIES + RAM_MERGED:
        index = _build_ivf(keys, out, choice, train_ids, engine, progress)
    else:
        index = _build_in_ram(keys, choice, progress)
    build_s = time.perf_counter() - t0
    tuning = _tune(index, keys, out, choice, query_ids, k, target_recall)
    index.info = {"choice": choice.to_dict(), "budget_bytes": plan["budget"], "tuning": tuning,
                  "build_seconds": round(build_s, 1), "shards": keys.names, "rows": keys.rows}
    index.save(out)
    index.info["bytes_on_disk"] = _folder_bytes(out)
    index.save_meta(out)  # index.json last: the folder now holds a finished index
    log.info("index %s: %s, recall@%d %.3f", out, index.spec, k, tuning["recall_heldout"])
    return index


def _make_plan(keys: KeyShards, budget: int, backend: str, factory: str | None, target: float,
               k: int, seed: int) -> dict:
    """What the build will do (plan.json), from its inputs alone."""
    if backend not in ("faiss", "scann"):
        raise InputError(f"unknown index backend {backend!r}; choose faiss or scann")
    if backend == "scann":
        from .scann_index import ScannIndex

        leaves = ScannIndex(keys.d, factory or "").options["leaves"] or \
            max(1, min(int(np.sqrt(keys.n)), keys.n // 50 or 1))  # the options are checked here
        choice = IndexChoice("scann" + (f":{factory}" if factory else ""), "scann", leaves, 0,
                             min(keys.n, 250_000), "ScaNN asked for")
    elif factory:
        family = ("flat" if factory == "Flat" else "hnsw" if factory.startswith("HNSW") else
                  "ivf-fs" if "fs," in factory and "Refine" in factory else
                  "ivf-pq" if "PQ" in factory else "ivf-sq8" if "SQ" in factory else "ivf-flat")
        nlist = _ivf_lists(factory)
        choice = IndexChoice(factory, family, nlist, 0, min(keys.n, 50 * nlist) if nlist else 0,
                             "factory string given")
    else:
        choice = choose_index(keys.n, keys.d, budget, target)
    return {"n": keys.n, "d": keys.d, "rows": keys.rows, "budget": budget, "backend": backend,
            "choice": choice.to_dict(), "seed": seed, "target_recall": target, "k": k}


def _ivf_lists(factory: str) -> int:
    """The number of inverted lists a faiss factory string asks for (0: not an IVF index)."""
    if "IVF" not in factory:
        return 0
    m = re.match(r"(\d+)", factory.split("IVF", 1)[1])
    if not m:
        raise InputError(f"index factory {factory!r}: IVF must be followed by its number of "
                         "lists, e.g. IVF1024,Flat")
    return int(m.group(1))


def _plan(keys: KeyShards, out: Path, budget: int, backend: str, factory: str | None,
          target: float, k: int, seed: int) -> dict:
    plan = _make_plan(keys, budget, backend, factory, target, k, seed)
    path = out / PLAN_NAME
    if not path.exists() or _identity(load_json(path)) != _identity(plan):
        # earlier partial work (or an attached index) belongs to another index
        log.info("%s: inputs changed, discarding earlier build files", out)
        clear_build_files(out)
    save_json(path, plan)
    return plan


def clear_build_files(folder: Path) -> None:
    """Removes what an earlier build or attach left in ``folder`` (see BUILD_FILES)."""
    for name in BUILD_FILES:
        shutil.rmtree(folder / name, ignore_errors=True) if (folder / name).is_dir() else \
            (folder / name).unlink(missing_ok=True)


def _identity(plan: dict) -> tuple:
    """What the trained quantizers and encoded blocks depend on (not the budget, the target
    recall or k: those only change the search parameters, which are tuned again anyway)."""
    return (plan["n"], plan["d"], plan["rows"], plan["backend"], plan["choice"]["factory"],
            plan["choice"]["train_rows"], plan["seed"])


def _batches(array: np.ndarray, offset: int):
    for r0 in range(0, len(array), ADD_BATCH):
        yield np.arange(offset + r0, offset + min(r0 + ADD_BATCH, len(array))), \
            np.ascontiguousarray(array[r0:r0 + ADD_BATCH], dtype=np.float32)


def _add_all(index, keys: KeyShards, desc: str, progress: bool):
    """Adds every key to ``index``, ADD_BATCH float32 rows at a time (never all in RAM twice)."""
    with progress_bar(keys.n, f"adding to {desc}", "vec", enabled=progress) as bar:
        for array, offset in zip(keys.arrays, keys.offsets):
            for ids, x in _batches(array, offset):
                index.add(x)
                bar.update(len(ids))
    return index


def _build_in_ram(keys: KeyShards, choice: IndexChoice, progress: bool) -> FaissIndex:
    return _add_all(FaissIndex(keys.d, choice.factory, vectors=keys), keys, choice.factory, progress)


def _train(keys: KeyShards, out: Path, choice: IndexChoice, train_ids: np.ndarray) -> Path:
    path = out / "trained.faiss"
    if not path.exists():
        index = faiss.index_factory(keys.d, choice.factory, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        index.train(keys(train_ids))
        log.info("trained %s on %d vectors in %.1f s", choice.factory, len(train_ids), time.perf_counter() - t)
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
    return path


def add_block(trained: str, shard, offset: int, block: str) -> str:
    """Encodes one shard into a copy of the trained index and writes it to ``block``
    (a top-level function, so that Ray can run it on another node)."""
    index = faiss.read_index(str(trained))
    array = np.load(shard, mmap_mode="r") if isinstance(shard, (str, os.PathLike)) else shard
    refine = isinstance(index, faiss.IndexRefine)  # ids stay block-local; the merge shifts them
    for ids, x in _batches(array, offset):
        index.add(x) if refine else index.add_with_ids(x, ids)
    with atomic_path(Path(block)) as tmp:
        faiss.write_index(index, str(tmp))
    return str(block)


def _add_blocks(keys: KeyShards, out: Path, trained: Path, engine: str, progress: bool) -> list[Path]:
    blocks = [out / "blocks" / f"{name}.faiss" for name in keys.names]
    todo = [i for i, b in enumerate(blocks) if not b.exists()]
    (out / "blocks").mkdir(exist_ok=True)
    with progress_bar(len(blocks), "encoding shards", "shard", initial=len(blocks) - len(todo),
                      enabled=progress) as bar:
        if engine == "ray":
            if any(not isinstance(keys.sources[i], (str, os.PathLike)) for i in todo):
                raise ValueError("engine='ray' needs key shards given as .npy paths")  # a caller bug
            run_tasks(add_block, [(str(trained), str(keys.sources[i]), int(keys.offsets[i]), str(blocks[i]))
                                  for i in todo], lambda _: bar.update(1))
        else:
            for i in todo:
                add_block(trained, keys.arrays[i], int(keys.offsets[i]), blocks[i])
                bar.update(1)
    return blocks


def merge_blocks(trained: Path, blocks: Sequence[Path], out: Path) -> None:
    """Merges encoded blocks into ``out/index.faiss`` + ``out/index.ivfdata`` (on-disk lists).

    Both files are made in a temporary folder and renamed into place; ``index.json`` must be
    removed before and written after by the caller, so a crash in between reads as unfinished.
    """
    from faiss.contrib.ondisk import merge_ondisk

    tmp = out / "merge.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    index = faiss.read_index(str(trained))
    with quiet_native():  # faiss prints the on-disk lists' resizes
        merge_ondisk(index, [str(b) for b in blocks], str(tmp / IVFDATA_NAME))
        faiss.write_index(index, str(tmp / INDEX_NAME))
    del index
    os.replace(tmp / IVFDATA_NAME, out / IVFDATA_NAME)
    os.replace(tmp / INDEX_NAME, out / INDEX_NAME)
    tmp.rmdir()


def merge_in_ram(index, blocks: Sequence[Path], rows: Sequence[int]):
    """Fast-scan + refine blocks (of ``rows`` vectors each) merged into ``index`` (the trained,
    empty index, or a built one being appended to): the IVF parts are merged list by list,
    each block's local ids shifted by the rows before it (faiss's IndexRefine has no merge of
    its own), and the refine codes are copied into a buffer grown once: growing it block by
    block would double it at each reallocation, and at 10^7 vectors that transient copy alone
    would break an 8 GiB budget."""
    refine = faiss.downcast_index(index.refine_index)
    size, total = refine.code_size, index.ntotal + int(sum(rows))
    refine.codes.resize(total * size)  # keeps the codes already there
    codes = faiss.rev_swig_ptr(refine.codes.data(), total * size)
    for block, n in zip(blocks, rows):
        part = faiss.read_index(str(block))
        if part.ntotal != n:
            raise InputError(f"{block}: holds {part.ntotal} vectors, its shard has {n}; delete it to re-encode")
        start = index.base_index.ntotal
        index.base_index.merge_from(part.base_index, start)
        part_codes = faiss.downcast_index(part.refine_index).codes
        codes[start * size:(start + n) * size] = faiss.rev_swig_ptr(part_codes.data(), n * size)
        del part
    refine.ntotal = index.ntotal = index.base_index.ntotal
    return index


def _build_ivf(keys: KeyShards, out: Path, choice: IndexChoice, train_ids: np.ndarray, engine: str,
               progress: bool) -> FaissIndex:
    trained = _train(keys, out, choice, train_ids)
    blocks = _add_blocks(keys, out, trained, engine, progress)
    if choice.family in RAM_MERGED:
        merged = merge_in_ram(faiss.read_index(str(trained)), blocks, keys.rows)
        return FaissIndex(keys.d, choice.factory, index=merged, vectors=keys)
    merge_blocks(trained, blocks, out)
    with quiet_native():
        index = faiss.read_index(str(out / INDEX_NAME), faiss.IO_FLAG_ONDISK_SAME_DIR)
    return FaissIndex(keys.d, choice.factory, index=index, vectors=keys)


def _build_scann(keys: KeyShards, out: Path, options: str, progress: bool):
    """ScaNN takes the whole dataset as one float32 array. It is assembled in a file-backed
    map (page cache, not process memory), so only ScaNN's own copy is resident."""
    from numpy.lib.format import open_memmap

    from .scann_index import ScannIndex

    single = len(keys.arrays) == 1 and keys.arrays[0].dtype == np.float32
    tmp = out / "scann_input.npy"
    if single:
        db = keys.arrays[0]
    else:
        db = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(keys.n, keys.d))
        for array, offset in zip(keys.arrays, keys.offsets):
            for r0 in range(0, len(array), ADD_BATCH):
                db[offset + r0: offset + r0 + len(array[r0:r0 + ADD_BATCH])] = array[r0:r0 + ADD_BATCH]
        db.flush()
    index = ScannIndex(keys.d, options, vectors=keys)
    index.add(db)
    index.build()
    del db
    tmp.unlink(missing_ok=True)
    return index


def _tune(index, keys: KeyShards, out: Path, choice: IndexChoice, query_ids: np.ndarray, k: int,
          target: float, hnsw_coarse: bool | None = None) -> dict:
    """Tunes ``index`` against exact search of the rows ``query_ids`` (see tune.py);
    ``hnsw_coarse`` defaults to what the factory string says."""
    queries = keys(query_ids)
    k = min(k, keys.n - 1)
    gt_path = out / "tune" / "gt.npy"
    gt = load_npy(gt_path) if gt_path.exists() else None
    if gt is None or gt.shape != (len(queries), k):
        _, I = exact_search(keys.arrays, queries, k + 1)
        gt = drop_self(I, query_ids, k)
        save_npy(out / "tune" / "query_rows.npy", query_ids)
        save_npy(gt_path, gt)
    if choice.family == "flat":
        recall, qps = measure(index, queries, query_ids, gt, k)
        return {"target_recall": target, "k": k, "params": {}, "reached": True,
                "recall_heldout": round(recall, 4), "qps_heldout": round(qps, 1)}
    nlist = choice.nlist or (index.num_leaves if choice.family == "scann" else 0)
    # PQ codes alone rarely reach a high recall@100; exact rescoring from the key shards does.
    reranks = (1, 2, 4, 8) if choice.family == "ivf-pq" else (2, 4, 8) if choice.family in RAM_MERGED else (1,)
    return tune(index, choice.family, nlist, queries, query_ids, gt, k, target, reranks,
                hnsw_coarse="_HNSW" in choice.factory if hnsw_coarse is None else hnsw_coarse,
                rerank_name="k_factor_rf" if choice.family in RAM_MERGED else "rerank")


def _folder_bytes(folder: Path) -> dict:
    sizes = {}
    for name in (INDEX_NAME, IVFDATA_NAME):
        if (folder / name).exists():
            sizes[name] = (folder / name).stat().st_size
    if (folder / "scann").is_dir():
        sizes["scann"] = sum(f.stat().st_size for f in (folder / "scann").iterdir())
    return sizes


def add_to_index(folder: Path | str, shards: Sequence, names: Sequence[str], offset: int,
                 progress: bool = True):
    """Appends shards (global rows from ``offset``) to a built index without retraining:
    IVF indexes encode the new shards into blocks and re-merge the on-disk lists; Flat and
    HNSW indexes add in RAM and are saved again. ScaNN cannot append (rebuild it)."""
    folder = Path(folder)
    meta = load_json(folder / META_NAME)
    if not meta["spec"].startswith("faiss:"):
        raise InputError(f"{folder}: a {meta['spec']} index cannot append; rebuild it with ravis memory index")
    index = FaissIndex.load(folder)
    if index.ntotal != offset:
        raise InputError(f"{folder}: index holds {index.ntotal} vectors but the new shards start at row {offset}")
    family = index.info.get("choice", {}).get("family", "")
    if "attached" in index.info:  # no trained.faiss or blocks here: add to it in RAM
        family = "attached"
    new = KeyShards(shards, names)
    if family in RAM_MERGED:
        new.offsets = new.offsets + offset
        old_blocks = set((folder / "blocks").glob("*.faiss"))
        blocks = _add_blocks(new, folder, folder / "trained.faiss", "local", progress)
        fresh = [(b, n) for b, n in zip(blocks, new.rows) if b not in old_blocks]
        merge_in_ram(index.index, [b for b, _ in fresh], [n for _, n in fresh])
    elif family in IVF_FAMILIES:
        new.offsets = new.offsets + offset
        old_blocks = sorted((folder / "blocks").glob("*.faiss"))
        trained = folder / "trained.faiss"
        blocks = _add_blocks(new, folder, trained, "local", progress)
        del index
        (folder / META_NAME).unlink()
        merge_blocks(trained, old_blocks + [b for b in blocks if b not in old_blocks], folder)
        with quiet_native():
            read = faiss.read_index(str(folder / INDEX_NAME), faiss.IO_FLAG_ONDISK_SAME_DIR)
        index = FaissIndex(meta["d"], meta["spec"].partition(":")[2], index=read)
        index.set_search_params(**meta.get("search_params", {}))
    else:
        for array in new.arrays:
            index.add(np.asarray(array, dtype=np.float32))
    index.info = {**meta.get("info", {}), "appended": meta.get("info", {}).get("appended", []) + list(names)}
    index.save(folder)
    index.info["bytes_on_disk"] = _folder_bytes(folder)
    index.save_meta(folder)
    return index
