"""Embed a dataset (or a list of strings) once, into a content-addressed, resumable cache.

Layout of ``cache_dir/embeddings/<key>/``, key = hash(encoder name, encoder fingerprint, data):

    shard_00000.npy         (n, dim) float32: items [start, stop) of shard 0
    shard_00000.valid.npy   (n,) bool: False for images that could not be read (zero rows)
    shard_00000.json        start, stop, skipped [(id, reason)], hash of the two arrays
    embeddings.npy, valid.npy (images) or inverse.npy (texts), meta.json: the finished result

Every file is written under a temporary name and renamed, so a killed run leaves whole files
or none. A shard's .json is written after its arrays and carries their hash, so a shard counts
as done only when all three files agree: arrays from an interrupted rewrite, from a run with
another shard_size, or damaged on disk are recomputed (with a warning naming the file).
Likewise meta.json is written last. Batches never straddle shards, so a resumed run feeds the
encoder exactly the batches an uninterrupted run would, and gives the same arrays.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..cache import entry_lock
from ..data.dataset import BadImageError, ImageDataset
from ..errors import InputError
from ..io import load_json, load_npy, save_json, save_npy, stable_hash
from ..progress import progress_bar
from .base import ImageEncoder, TextEncoder

log = logging.getLogger(__name__)

STALE_TMP_SECONDS = 3600  # a temporary file this old belongs to a killed run, not a live writer


@dataclass
class EmbeddingResult:
    """The embeddings of a dataset: row i belongs to dataset item i."""

    embeddings: np.ndarray  # (N, dim) float32; zero rows where valid is False
    valid: np.ndarray  # (N,) bool; False for images that could not be read
    skipped: list[tuple[str, str]]  # (item id, reason) for each invalid row, in item order
    seconds: float  # wall time of this call (just loading, when cached)
    cached: bool  # True when read from a finished cache without running the encoder
    path: Path | None = None  # the cache directory of this result


# ---------------------------------------------------------------------------------------------
# The cache directory of one key


class _Store:
    """The files of one cache key: every write is atomic and every read is validated."""

    def __init__(self, root: Path, dim: int):
        self.root, self.dim = Path(root), dim

    def _shard_paths(self, i: int) -> tuple[Path, Path, Path]:
        stem = f"shard_{i:05d}"
        return (self.root / f"{stem}.npy", self.root / f"{stem}.valid.npy",
                self.root / f"{stem}.json")

    def load_shard(self, i: int, start: int, stop: int):
        """(embeddings, valid, skipped) of a finished shard, or None if it must be computed."""
        emb_path, valid_path, meta_path = self._shard_paths(i)
        if not meta_path.exists():
            return None  # never finished; its arrays, if any, are not to be trusted
        try:
            meta = load_json(meta_path)
            if (meta.get("start"), meta.get("stop")) != (start, stop):
                raise InputError(f"it covers items [{meta.get('start')}, {meta.get('stop')}), "
                                 f"this run needs [{start}, {stop}) (another shard_size?)")
            emb, valid = load_npy(emb_path), load_npy(valid_path)
            _expect(emb_path, emb, (stop - start, self.dim), np.float32)
            _expect(valid_path, valid, (stop - start,), np.bool_)
            if meta.get("hash") != stable_hash(emb, valid):
                raise InputError("its arrays do not match the hash in its .json")
            skipped = [(str(a), str(b)) for a, b in meta["skipped"]]
            if len(skipped) != int((~valid).sum()):
                raise InputError(f"{len(skipped)} skipped items but {int((~valid).sum())} "
                                 "invalid rows")
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.warning("recomputing shard %s: %s", meta_path, e)
            return None
        return emb, valid, skipped

    def save_shard(self, i: int, start: int, stop: int, emb, valid, skipped) -> None:
        emb_path, valid_path, meta_path = self._shard_paths(i)
        save_npy(emb_path, emb)
        save_npy(valid_path, valid)
        save_json(meta_path, {"start": start, "stop": stop, "hash": stable_hash(emb, valid),
                              "skipped": [list(s) for s in skipped]})

    def load_final(self, expect: dict[str, tuple[tuple[int, ...], type]]):
        """({name: array}, meta) of a finished result with the expected shapes, or None."""
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            return None
        try:
            meta = load_json(meta_path)
            arrays = {}
            for name, (shape, dtype) in expect.items():
                path = self.root / f"{name}.npy"
                arrays[name] = _expect(path, load_npy(path), shape, dtype)
            if meta.get("hash") != stable_hash(*arrays.values()):
                raise InputError("its arrays do not match the hash in meta.json (damaged or "
                                 "changed, or written by an older ravis)")
        except (ValueError, OSError) as e:
            log.warning("ignoring the damaged cache %s, recomputing: %s", self.root, e)
            return None
        return arrays, meta

    def save_final(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Write the result (meta.json last: it marks completion and holds the arrays' hash,
        checked on every load), then drop shards and litter."""
        for name, array in arrays.items():
            save_npy(self.root / f"{name}.npy", array)
        save_json(self.root / "meta.json", {**meta, "hash": stable_hash(*arrays.values())})
        for path in self.root.glob("shard_*"):
            path.unlink(missing_ok=True)
        now = time.time()
        for path in self.root.glob(".*.tmp"):  # left by runs killed mid-write
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > STALE_TMP_SECONDS:
                    path.unlink()


def _expect(path: Path, a: np.ndarray, shape: tuple[int, ...], dtype) -> np.ndarray:
    if a.shape != tuple(shape) or a.dtype != dtype:
        raise InputError(f"{path.name} has shape {a.shape} {a.dtype}, "
                         f"expected {tuple(shape)} {np.dtype(dtype)}")
    return a


def _check_rows(out, n: int, dim: int, who: str, name_of: Callable[[int], str]) -> np.ndarray:
    """Encoder output as (n, dim) float32, refusing wrong shapes and NaN or infinite rows."""
    out = np.asarray(out, dtype=np.float32)
    if out.shape != (n, dim):
        raise InputError(f"{who} returned shape {out.shape} for {n} inputs, expected ({n}, {dim})")
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        more = f" (and {int(bad.sum()) - 1} more in its batch)" if bad.sum() > 1 else ""
        first = name_of(int(np.argmax(bad)))
        raise InputError(f"{who} gave a NaN or infinite embedding for {first}{more}")
    return out


# ---------------------------------------------------------------------------------------------
# Shards: load what is done, compute the rest, assemble


def _shard_ranges(n: int, shard_size: int) -> list[tuple[int, int, int]]:
    return [(i, start, min(start + shard_size, n))
            for i, start in enumerate(range(0, n, shard_size))]


def _run_shards(store: _Store, n: int, shard_size: int, compute, desc: str, unit: str,
                progress: bool):
    """(embeddings (n, dim), valid (n,), skipped) from finished shards plus computed ones.

    ``compute(pending, bar)`` yields (i, emb, valid, skipped) for the pending shards in order;
    each is saved as soon as it arrives, so a crash loses at most the shard in progress.
    """
    emb = np.zeros((n, store.dim), np.float32)  # (N, dim)
    valid = np.zeros(n, bool)
    skipped: dict[int, list] = {}
    pending = []
    for i, start, stop in _shard_ranges(n, shard_size):
        done = store.load_shard(i, start, stop)
        if done is None:
            pending.append((i, start, stop))
        else:
            emb[start:stop], valid[start:stop], skipped[i] = done
    todo = sum(stop - start for _, start, stop in pending)
    with progress_bar(n, desc, unit, initial=n - todo, enabled=progress and todo > 0) as bar:
        for i, e, v, s in compute(pending, bar):
            start, stop = i * shard_size, min((i + 1) * shard_size, n)
            store.save_shard(i, start, stop, e, v, s)
            emb[start:stop], valid[start:stop], skipped[i] = e, v, s
    return emb, valid, [s for i in sorted(skipped) for s in skipped[i]]


# ---------------------------------------------------------------------------------------------
# Images


@dataclass
class _Batch:
    """One batch, loaded and preprocessed on a worker thread."""

    items: range  # dataset indices of the batch
    rows: list[int]  # positions within items of the readable images
    pixels: np.ndarray | None  # (len(rows), C, H, W) float32, None if no image was readable
    skipped: list[tuple[str, str]]  # (id, reason) of the unreadable ones


def _prepare(encoder: ImageEncoder, dataset: ImageDataset, items: range, strict: bool) -> _Batch:
    buf, rows, skipped = None, [], []
    for k, i in enumerate(items):
        try:
            x = encoder.preprocess(dataset.load_image(i))
        except BadImageError as e:
            if strict:
                raise
            skipped.append((dataset.ids[i], str(e)))
            continue
        except OSError as e:  # PIL decodes lazily: a truncated file fails here, not in the loader
            if strict:
                raise BadImageError(f"{dataset.ids[i]}: {e}") from e
            skipped.append((dataset.ids[i], f"cannot decode: {e}"))
            continue
        if buf is None:  # filled in place: saves the copy np.stack would make
            buf = np.empty((len(items),) + np.shape(x), np.asarray(x).dtype)
        elif np.shape(x) != buf.shape[1:]:  # assignment would silently broadcast
            raise InputError(f"{dataset.ids[i]}: {encoder.name} preprocess gave shape "
                             f"{np.shape(x)}, other images in its batch {buf.shape[1:]}")
        buf[len(rows)] = x
        rows.append(k)
    return _Batch(items, rows, None if buf is None else buf[:len(rows)], skipped)


def _in_order(fn: Callable, jobs: Iterable, workers: int, depth: int) -> Iterator:
    """fn(job) for each job on ``workers`` threads, yielded in job order, at most ``depth``
    results ahead of the consumer (bounding memory to depth batches)."""
    jobs = iter(jobs)
    with ThreadPoolExecutor(workers, thread_name_prefix="ravis-embed") as pool:
        ahead = collections.deque(pool.submit(fn, job) for job in itertools.islice(jobs, depth))
        try:
            while ahead:
                result = ahead.popleft().result()
                ahead.extend(pool.submit(fn, job) for job in itertools.islice(jobs, 1))
                yield result
        finally:  # the consumer stopped (or failed): do not preprocess what nobody will read
            for future in ahead:
                future.cancel()


def encode_halving(encoder, pixels: np.ndarray) -> np.ndarray:
    """``encoder.encode_pixels(pixels)``, where the GPU runs out of memory halving the batch
    (recursively, down to one image) and saying so."""
    try:
        return encoder.encode_pixels(pixels)
    except Exception as e:  # torch.cuda.OutOfMemoryError, or onnxruntime's allocation failure
        if not _out_of_memory(e) or len(pixels) < 2:
            raise
    half = len(pixels) // 2
    log.warning("%s: out of GPU memory at a batch of %d images; encoding it as two of %d and %d",
                encoder.name, len(pixels), half, len(pixels) - half)
    return np.concatenate([encode_halving(encoder, pixels[:half]), encode_halving(encoder, pixels[half:])])


def _out_of_memory(e: Exception) -> bool:
    import torch

    text = str(e).lower()
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        "out of memory" in text or "failed to allocate memory" in text)


def _encode_image_shards(encoder, dataset, batch_size, strict, workers):
    dim = int(encoder.dim)

    def compute(pending, bar):
        jobs = [range(b, min(b + batch_size, stop))
                for _, start, stop in pending for b in range(start, stop, batch_size)]
        batches = _in_order(lambda items: _prepare(encoder, dataset, items, strict),
                            jobs, workers, depth=workers + 2)
        with contextlib.closing(batches):
            for i, start, stop in pending:
                emb = np.zeros((stop - start, dim), np.float32)  # (n, dim)
                valid = np.zeros(stop - start, bool)
                skipped = []
                for _ in range(start, stop, batch_size):
                    batch = next(batches)
                    for item, reason in batch.skipped:
                        log.warning("skipping image %s: %s", item, reason)
                    if batch.rows:
                        out = _check_rows(
                            encode_halving(encoder, batch.pixels), len(batch.rows), dim,
                            encoder.name,
                            lambda k: f"image {dataset.ids[batch.items[batch.rows[k]]]}")
                        pos = np.asarray(batch.rows) + (batch.items.start - start)
                        emb[pos], valid[pos] = out, True
                    skipped += batch.skipped
                    bar.update(len(batch.items))
                yield i, emb, valid, skipped

    return compute


def embed_images(encoder: ImageEncoder, dataset: ImageDataset, cache_dir: Path | str, *,
                 batch_size: int = 64, shard_size: int = 4096, strict: bool = False,
                 progress: bool = True, num_workers: int | None = None) -> EmbeddingResult:
    """Embeddings of every image of ``dataset``, computed once and cached under ``cache_dir``.

    Images are loaded and preprocessed on ``num_workers`` threads (default: one per core, at
    most 4) a few batches ahead of the encoder, which runs on the calling thread; batch order
    is fixed. An interrupted run resumes from its last finished shard.

    Args:
        strict: raise on an unreadable image (also one skipped by an earlier cached run)
            instead of skipping it with a warning and a zero row marked invalid.
        progress: show items/s and ETA on stderr.

    Raises:
        BadImageError: with ``strict``, naming the image.
        ValueError: an embedding that is NaN or infinite, naming the item id.
    """
    if batch_size < 1 or shard_size < 1:
        raise InputError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    t0 = time.perf_counter()
    dim = int(encoder.dim)
    fingerprint = encoder.fingerprint()
    store = _Store(_image_cache_root(encoder, dataset, cache_dir), dim)
    with entry_lock(store.root):  # a second run of the same key waits, then reads the result
        return _embed_images(store, encoder, dataset, fingerprint, t0, batch_size, shard_size,
                             strict, progress, num_workers)


def _embed_images(store: "_Store", encoder: ImageEncoder, dataset: ImageDataset, fingerprint: str,
                  t0: float, batch_size: int, shard_size: int, strict: bool, progress: bool,
                  num_workers: int | None) -> EmbeddingResult:
    n, dim = len(dataset), store.dim
    found = store.load_final({"embeddings": ((n, dim), np.float32), "valid": ((n,), np.bool_)})
    if found is not None:
        arrays, meta = found
        skipped = [(str(a), str(b)) for a, b in meta.get("skipped", [])]
        if len(skipped) == int((~arrays["valid"]).sum()):
            _raise_if_strict(strict, skipped)
            return EmbeddingResult(arrays["embeddings"], arrays["valid"], skipped,
                                   time.perf_counter() - t0, True, store.root)
        log.warning("ignoring the damaged cache %s, recomputing: meta.json lists %d skipped "
                    "items, valid.npy %d", store.root, len(skipped), int((~arrays["valid"]).sum()))
    workers = num_workers or max(1, min(4, os.cpu_count() or 1))
    compute = _encode_image_shards(encoder, dataset, batch_size, strict, workers)
    emb, valid, skipped = _run_shards(store, n, shard_size, compute,
                                      f"embed {dataset.name}", "img", progress)
    _raise_if_strict(strict, skipped)  # skips recorded by an earlier, non-strict run
    if skipped:
        log.warning("%s: skipped %d of %d images that could not be read (first: %s)",
                    dataset.name, len(skipped), n, skipped[0][0])
    seconds = time.perf_counter() - t0
    store.save_final({"embeddings": emb, "valid": valid}, {
        "encoder": encoder.name, "fingerprint": fingerprint, "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint, "n": n, "dim": dim,
        "seconds": round(seconds, 3), "skipped": [list(s) for s in skipped]})
    return EmbeddingResult(emb, valid, skipped, seconds, False, store.root)


def _image_cache_root(encoder: ImageEncoder, dataset: ImageDataset, cache_dir) -> Path:
    return (Path(cache_dir) / "embeddings"
            / stable_hash(encoder.name, encoder.fingerprint(), dataset.fingerprint))


def _raise_if_strict(strict: bool, skipped: list[tuple[str, str]]) -> None:
    if strict and skipped:
        item, reason = skipped[0]
        raise BadImageError(f"{item}: {reason} ({len(skipped)} unreadable images in all)")


# ---------------------------------------------------------------------------------------------
# Texts


def embed_texts(encoder: TextEncoder, texts: Iterable[str], cache_dir: Path | str, *,
                batch_size: int = 256, shard_size: int = 65536,
                progress: bool = False) -> np.ndarray:
    """(N, dim) float32 embeddings of ``texts``, each distinct string encoded once, cached.

    Label prompts repeat (60000 items, 10 strings), so only distinct strings are encoded and
    stored, with the (N,) index of each text into them. Same cache scheme as images.

    Raises:
        ValueError: a NaN or infinite embedding, naming the index of the text.
    """
    texts = list(texts)
    where: dict[str, int] = {}
    first: list[int] = []  # index in texts of each distinct string's first occurrence
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is a {type(t).__name__}, not a str")
        if t not in where:
            where[t] = len(first)
            first.append(i)
    inverse = np.fromiter((where[t] for t in texts), np.int64, count=len(texts))  # (N,)
    unique = [texts[i] for i in first]
    dim = int(encoder.dim)
    fingerprint = encoder.fingerprint()
    store = _Store(Path(cache_dir) / "embeddings"
                   / stable_hash("texts", encoder.name, fingerprint, texts), dim)
    with entry_lock(store.root):
        return _embed_texts(store, encoder, fingerprint, texts, unique, first, inverse,
                            batch_size, shard_size, progress)


def _embed_texts(store: "_Store", encoder: TextEncoder, fingerprint: str, texts: list[str],
                 unique: list[str], first: list[int], inverse: np.ndarray, batch_size: int,
                 shard_size: int, progress: bool) -> np.ndarray:
    n, dim = len(unique), store.dim
    found = store.load_final({"embeddings": ((n, dim), np.float32),
                              "inverse": ((len(texts),), np.int64)})
    if found is not None:
        return found[0]["embeddings"][found[0]["inverse"]]

    def compute(pending, bar):
        for i, start, stop in pending:
            parts = []
            for b in range(start, stop, batch_size):
                chunk = unique[b:min(b + batch_size, stop)]
                parts.append(_check_rows(encoder.encode_texts(chunk), len(chunk), dim,
                                         encoder.name,
                                         lambda k: f"text {first[b + k]} ({chunk[k][:80]!r})"))
                bar.update(len(chunk))
            yield i, np.concatenate(parts), np.ones(stop - start, bool), []

    emb, _, _ = _run_shards(store, n, shard_size, compute, "embed texts", "text",
                            progress)
    store.save_final({"embeddings": emb, "inverse": inverse}, {
        "encoder": encoder.name, "fingerprint": fingerprint, "n": len(texts), "unique": n,
        "dim": dim})
    return emb[inverse]


def is_embedded(encoder: ImageEncoder, dataset: ImageDataset, cache_dir: Path | str) -> bool:
    """Whether :func:`embed_images` would return ``dataset``'s embeddings from the cache."""
    return (_image_cache_root(encoder, dataset, cache_dir) / "meta.json").exists()
