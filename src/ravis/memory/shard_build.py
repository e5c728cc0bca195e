"""Building a sharded memory from image-text collections, in one process or on Ray.

One input shard (a tar, a parquet file, a slice of a folder) becomes one memory shard:
read rows -> decode images (bad ones skipped and counted) -> embed images in batches (keys,
L2-normalised) and captions (values) -> write keys, values and metadata atomically -> record
the shard in the manifest. Both engines run the same pipeline (:func:`build_shards`:
reading and decoding ahead of the encoders, writing behind them) on the same rows with the
same batches, so they write the same bytes; the local engine runs one pipeline over every
input shard, the Ray engine one task per input shard, and the driver records each as it
finishes. A task whose worker dies is retried; its files are renamed into place only when
complete, so a crash never leaves half a shard in the manifest. A rerun skips the shards
whose files are in the manifest with matching checksums and redoes the rest.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from ..config import MemoryBuildConfig
from ..errors import InputError
from ..io import exclusive_lock
from ..progress import progress_bar
from ..ray_tasks import run_tasks
from ._shard_pipeline import Reader, encode, load_encoders, write
from .dedup import drop_duplicate_images
from .sharded import (FORMAT, ShardedMemory, check_shard_files, load_manifest,
                      save_manifest)
from ..data.sources import InputShard, resolve_sources
from .store import MemoryMismatchError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Shards, on a pipeline (:mod:`._shard_pipeline`)


def build_shard(memdir: str, name: str, shard: InputShard, settings: MemoryBuildConfig) -> dict:
    """Builds memory shard ``name`` from ``shard``; returns its manifest entry.

    An unreadable input shard returns ``{"name", "input", "error"}`` instead (raises with
    ``strict``). Runs in a Ray worker, or wherever one shard is built on its own.
    """
    with contextlib.closing(build_shards(memdir, [(name, shard)], settings)) as results:
        return next(results)


def build_shards(memdir: str, jobs, settings: MemoryBuildConfig) -> Iterator[dict]:
    """The manifest entry of each job (name, input shard) in job order, the same as
    :func:`build_shard` gives for each, from a pipeline that decodes ahead of the encoders
    and writes behind them.

    An entry comes once its files are in place, one shard behind the encoders. After a
    failure the entries of the shards already written still come, then the error.
    """
    os.environ.update(dict(settings.env))
    image_encoder, text_encoder = load_encoders(settings)
    reader = Reader(jobs, image_encoder, settings)
    writer = ThreadPoolExecutor(1, thread_name_prefix="ravis-write")
    pending: collections.deque = collections.deque()  # entries or their writes, in job order
    try:
        try:
            for name, shard, rows, skipped in reader.shards():
                if rows is None:  # an unreadable input shard; skipped is the error
                    pending.append({"name": name, "input": shard.input, "error": skipped})
                else:
                    encoded = encode(rows, skipped, reader.next_batch, image_encoder, text_encoder,
                                     shard.input, settings.batch_size)
                    pending.append(writer.submit(write, memdir, name, shard, *encoded,
                                                 skipped, settings.dtype))
                while len(pending) > 1:
                    yield _entry(pending.popleft())
        except Exception:
            while pending:  # what was written before the failure is kept
                yield _entry(pending.popleft())
            raise
        while pending:
            yield _entry(pending.popleft())
    finally:
        reader.close()
        writer.shutdown(wait=True, cancel_futures=True)


def _entry(item) -> dict:
    return item.result() if isinstance(item, Future) else item


# ---------------------------------------------------------------------------------------------
# The manifest of a build


def _new_manifest(specs, settings: MemoryBuildConfig, image_encoder, text_encoder,
                  class_names) -> dict:
    return {"format": FORMAT, "key_encoder": image_encoder.fingerprint(),
            "value_encoder": text_encoder.fingerprint(), "dim": int(image_encoder.dim),
            "value_dim": int(text_encoder.dim), "dtype": settings.dtype, "count": 0,
            "class_names": list(class_names), "skipped": {},
            "build": {"key_encoder_spec": settings.image_encoder,
                      "value_encoder_spec": settings.text_encoder,
                      "batch_size": settings.batch_size, "thumbnails": settings.thumbnails},
            "sources": list(specs), "shards": [], "failed_shards": []}


def _check_compatible(memdir: Path, old: dict, new: dict) -> None:
    """Refuses to mix shards made with other encoders, dims, dtype or batching."""
    for field in ("key_encoder", "value_encoder", "dim", "value_dim", "dtype", "build"):
        if old.get(field) != new[field]:
            raise MemoryMismatchError(
                f"{memdir / 'manifest.json'}: the memory has {field} {old.get(field)!r}, this "
                f"build would make {new[field]!r}; use another folder or the same settings")


class _ManifestWriter:
    """Records shard results into the manifest and saves it after each one, unless saving
    would take over ~5% of the time (a manifest of tens of thousands of shards is megabytes):
    then saves are spaced out, and a crash costs the few shards finished since the last."""

    CHEAP_SAVE = 0.05  # seconds: a save this quick is always made

    def __init__(self, memdir: Path, manifest: dict):
        self.memdir, self.manifest = memdir, manifest
        self.shards = {s["name"]: s for s in manifest["shards"]}
        self.failed = {s["name"]: s for s in manifest["failed_shards"]}
        self.saved_at, self.save_seconds = time.perf_counter(), 0.0

    def record(self, result: dict) -> None:
        name = result["name"]
        self.shards.pop(name, None)
        self.failed.pop(name, None)
        if "error" in result:
            self.failed[name] = result
        else:
            self.shards[name] = result
            self.failed = {n: f for n, f in self.failed.items() if f["input"] != result["input"]}
        since = time.perf_counter() - self.saved_at
        if self.save_seconds < self.CHEAP_SAVE or since >= 20 * self.save_seconds:
            self.save()

    def save(self) -> None:
        t0 = time.perf_counter()
        m = self.manifest
        m["shards"], m["failed_shards"] = list(self.shards.values()), list(self.failed.values())
        totals: dict[str, int] = {}
        for s in m["shards"]:
            for reason, n in s["skipped"].items():
                totals[reason] = totals.get(reason, 0) + n
        m["skipped"] = dict(sorted(totals.items()))
        save_manifest(self.memdir, m)
        self.saved_at = time.perf_counter()
        self.save_seconds = self.saved_at - t0


def _is_done(memdir: Path, manifest: dict, entry: dict | None, shard: InputShard) -> bool:
    if entry is None or entry["input"] != shard.input:
        return False
    problems = check_shard_files(memdir, manifest, entry, checksums=True)
    if problems:
        log.warning("rebuilding shard %s: %s", entry["name"], problems[0])
    return not problems


# ---------------------------------------------------------------------------------------------
# Engines


def _run(memdir: Path, manifest: dict, jobs, settings: MemoryBuildConfig, engine: str,
         ray_address, progress: bool, builder: Callable) -> None:
    """Builds the jobs (name, input shard) not already done, recording each as it ends."""
    if engine not in ("local", "ray"):
        raise InputError(f"unknown engine {engine!r}; choose local or ray")
    entries = {s["name"]: s for s in manifest["shards"]}
    todo = [(name, shard) for name, shard in jobs
            if not _is_done(memdir, manifest, entries.get(name), shard)]
    todo = _keep_index_rows(memdir, manifest, todo)
    writer = _ManifestWriter(memdir, manifest)
    writer.save()
    t0, rows, built = time.perf_counter(), 0, set()
    with progress_bar(len(jobs), "memory shards", "shard", initial=len(jobs) - len(todo),
                      enabled=progress and bool(todo)) as bar:
        def done(result: dict) -> None:
            nonlocal rows
            writer.record(result)
            if "error" not in result:
                built.add(result["name"])
            rows += result.get("rows", 0)
            bar.set_postfix_str(f"{rows} rows, {rows / (time.perf_counter() - t0):.1f} rows/s")
            bar.update(1)

        try:
            if engine == "local":
                with contextlib.closing(_local_results(memdir, todo, settings, builder)) as results:
                    for result in results:
                        done(result)
            else:
                _run_ray(memdir, todo, settings, ray_address, builder, done)
            for entry in drop_duplicate_images(memdir, list(writer.shards.values()), built):
                writer.record(entry)
        finally:  # what finished before a failure or an interrupt is kept
            writer.save()
    _remove_temporaries(memdir / "shards")
    _remove_temporaries(memdir)  # a manifest save that was killed
    for failed in manifest["failed_shards"]:
        log.warning("input shard %s failed: %s", failed["input"], failed["error"])


def _local_results(memdir: Path, todo, settings: MemoryBuildConfig, builder: Callable):
    """The local engine's results in job order: from one pipeline over every shard, or
    from a custom builder (tests inject faults with one) called once per shard."""
    if builder is build_shard:
        return build_shards(str(memdir), todo, settings)
    return (builder(str(memdir), name, shard, settings) for name, shard in todo)


def _keep_index_rows(memdir: Path, manifest: dict, todo: list) -> list:
    """The shards that can be built without moving rows an existing index refers to.

    Redoing a damaged shard from its own input keeps every row id. A new shard numbered
    before the last one (an input that failed before and might read now) would shift the
    rows after it, so it waits until the index is removed; a shard whose input changed is
    an error.
    """
    if not (memdir / "index").exists():
        return todo
    inputs = {s["name"]: s["input"] for s in manifest["shards"]}
    last = max(inputs, default="")
    changed = [n for n, shard in todo if n in inputs and inputs[n] != shard.input]
    if changed:
        raise MemoryMismatchError(
            f"{memdir}: shards {changed} now come from other inputs, which would renumber the "
            f"rows {memdir / 'index'} refers to; remove the index and build it again afterwards")
    held = [n for n, _ in todo if n not in inputs and n < last]
    if held:
        log.warning("%s: not retrying shards %s: they would renumber the rows the index refers "
                    "to; remove %s and rerun to include them", memdir, held, memdir / "index")
    return [(n, shard) for n, shard in todo if n not in held]


def _run_ray(memdir: Path, todo, settings: MemoryBuildConfig, address, builder, done) -> None:
    """One Ray task per shard; results are recorded in the order tasks finish."""
    task_settings = replace(settings, num_threads=settings.num_threads or 1, decode_workers=1,
                            env=settings.env + _worker_env())
    run_tasks(builder, [(str(memdir), name, shard, task_settings) for name, shard in todo], done,
              address=address, num_cpus=task_settings.num_threads)


def _worker_env() -> tuple:
    """The driver's ravis settings that workers need (model cache, offline hub)."""
    return tuple((k, os.environ[k]) for k in ("RAVIS_CACHE", "HF_HUB_OFFLINE", "RAVIS_QUIET") if k in os.environ)


def _remove_temporaries(folder: Path) -> None:
    """Temporary files of writers that were killed (the build is over: none is live)."""
    for path in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()


class MemoryBusyError(InputError):
    """Another build or add is writing the same memory folder."""


def _exclusive(memdir: Path):
    """Holds MEMDIR/.lock: two writers would each rewrite the manifest without the other's
    shards."""
    return exclusive_lock(memdir / ".lock", error=MemoryBusyError,
                          busy=f"{memdir}: another `ravis memory build` or `add` is writing this memory")


# ---------------------------------------------------------------------------------------------
# Public entry points


def build_sharded_memory(source_spec: str | list[str], out: Path | str,
                         image_encoder_spec: str = MemoryBuildConfig.image_encoder,
                         text_encoder_spec: str = MemoryBuildConfig.text_encoder,
                         dtype: str = MemoryBuildConfig.dtype,
                         engine: str = "local", ray_address: str | None = None,
                         strict: bool = False, thumbnails: bool = True, progress: bool = True,
                         *, rows_per_shard: int = MemoryBuildConfig.rows_per_shard, batch_size: int = 64,
                         shard_builder: Callable = build_shard) -> ShardedMemory:
    """Builds (or resumes building) the sharded memory ``out`` from ``source_spec``.

    Args:
        source_spec: one spec or a list (see :mod:`ravis.data.sources`).
        engine: "local" (this process) or "ray" (one task per input shard; ``ray.init
            (address=ray_address)`` unless Ray is already initialised). Input paths and
            ``out`` must be on a file system every Ray node sees.
        strict: a skipped row, an empty or an unreadable input shard raises instead.
        rows_per_shard: shard size for folder sources.
        shard_builder: the function that builds one shard (tests wrap it to inject faults).

    Returns:
        The memory, opened (headers checked).
    """
    out = Path(out).resolve()
    specs = [source_spec] if isinstance(source_spec, str) else list(source_spec)
    shards, class_names = resolve_sources(specs, rows_per_shard)
    settings = MemoryBuildConfig(image_encoder_spec, text_encoder_spec, dtype, thumbnails, strict,
                             batch_size)
    manifest = _new_manifest(specs, settings, *load_encoders(settings), class_names)
    with _exclusive(out):
        if (out / "manifest.json").exists():
            old = load_manifest(out)
            _check_compatible(out, old, manifest)
            if old["sources"][:len(specs)] != specs:
                raise MemoryMismatchError(
                    f"{out}: holds a memory built from {old['sources']}, not {specs}; use "
                    "`ravis memory add` to append sources, or another folder")
            manifest = old
        (out / "shards").mkdir(parents=True, exist_ok=True)
        jobs = [(f"{i:05d}", shard) for i, shard in enumerate(shards)]
        _run(out, manifest, jobs, settings, engine, ray_address, progress, shard_builder)
    return ShardedMemory.open(out)


def add_shards(memdir: Path | str, source_spec: str | list[str], *, engine: str = "local",
               ray_address: str | None = None, strict: bool = False, progress: bool = True,
               rows_per_shard: int = MemoryBuildConfig.rows_per_shard, shard_builder: Callable = build_shard) -> list[str]:
    """Appends the input shards of ``source_spec`` to an existing memory as new shards.

    Names continue the numbering; inputs the memory already holds are not added twice
    (so an interrupted add resumes). New folder classes are appended to class_names. If
    the memory has an index, the shards new in this call are added to it afterwards
    (:func:`ravis.memory.indexing.add_shards_to_index`).

    Returns:
        The names of this call's shards (new, or already present from an earlier try).

    Raises:
        MemoryMismatchError: the encoders would now give other embeddings (other weights).
    """
    memdir = Path(memdir).resolve()
    load_manifest(memdir)  # a clear error before the lock file is made
    with _exclusive(memdir):
        return _add(memdir, source_spec, engine, ray_address, strict, progress, rows_per_shard,
                    shard_builder)


def _add(memdir: Path, source_spec, engine, ray_address, strict, progress, rows_per_shard,
         shard_builder) -> list[str]:
    manifest = load_manifest(memdir)
    specs = [source_spec] if isinstance(source_spec, str) else list(source_spec)
    shards, class_names = resolve_sources(specs, rows_per_shard, manifest["class_names"])
    build = manifest["build"]
    settings = MemoryBuildConfig(build["key_encoder_spec"], build["value_encoder_spec"],
                             manifest["dtype"], build["thumbnails"], strict, build["batch_size"])
    _check_compatible(memdir, manifest,
                      _new_manifest(specs, settings, *load_encoders(settings), class_names))
    known = {s["input"]: s["name"] for s in manifest["shards"]}
    taken = [int(s["name"]) for s in manifest["shards"] + manifest["failed_shards"]]
    next_id = max(taken, default=-1) + 1
    jobs = []
    for shard in shards:
        if shard.input not in known:
            known[shard.input] = f"{next_id:05d}"
            next_id += 1
        jobs.append((known[shard.input], shard))
    manifest["class_names"] = class_names
    manifest["sources"] += [s for s in specs if s not in manifest["sources"]]
    before = {s["name"] for s in manifest["shards"]}
    _run(memdir, manifest, jobs, settings, engine, ray_address, progress, shard_builder)
    built = {s["name"] for s in manifest["shards"]}
    if (memdir / "index").exists():
        from . import indexing

        new = sorted(built - before)  # numbered after every existing shard: rows appended
        # Also after an earlier add died between its shards and the index update.
        if indexing.has_index(memdir) and indexing.indexed_rows(memdir) < ShardedMemory.open(memdir).count:
            indexing.add_shards_to_index(memdir, new, progress=progress)
    return [name for name, _ in jobs if name in built]
