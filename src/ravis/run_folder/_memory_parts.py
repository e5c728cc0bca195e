"""Where a run folder's memory parts live: saved into it (a memory made in RAM), referred to
by path and digest (a memory folder), or copied in; and opened again, checked."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..cache import code_version, entry_lock
from ..io import atomic_path, link_or_copy, load_json, save_json, stable_hash
from ..memory.base import MemoryMismatchError
from ..memory.compose import ComposedMemory, compose, source_name
from ..memory.sharded import STAMPS_NAME, ShardedMemory

log = logging.getLogger(__name__)

CONTENT_FILE = "content.json"  # the digest of the in-RAM memory a saved part holds


def part_slug(spec: str) -> str:
    return source_name(spec).replace("/", "-")


def save_part(folder: Path, memory_dir: Path, spec: str, memory, copy: bool,
              cache_dir: Path | None, format_version: int) -> dict:
    """The serving.json entry of one memory part of the experiment folder ``folder`` (see
    :meth:`ravis.run_folder.ExperimentFolder.save_memory_part`)."""
    target = memory_dir / part_slug(spec)
    if isinstance(memory, ShardedMemory) and not copy:
        return {"spec": spec, "path": str(memory.memdir.resolve()), "digest": memory.digest,
                "rows": len(memory), "copied": False}
    if isinstance(memory, ShardedMemory):
        saved = _copy_memory(memory, target)
    else:
        saved = _save_if_changed(memory, target, cache_dir, format_version)
        _link_same_files(saved, folder.parent, memory_dir.name)
    return {"spec": spec, "path": str(target.relative_to(folder)), "digest": saved.digest,
            "rows": len(saved), "copied": isinstance(memory, ShardedMemory)}


def _save_if_changed(memory, target: Path, cache_dir: Path | None, format_version: int) -> ShardedMemory:
    """ArrayMemory.save unless ``target`` already holds this memory (a rerun rewrites nothing)."""
    marker = target / CONTENT_FILE
    if marker.is_file() and load_json(marker).get("digest") == memory.digest:
        return ShardedMemory.open(target)
    if cache_dir is None:
        saved = memory.save(target)
    else:
        # named by everything the saved files hold, not only what the digest covers
        name = stable_hash(format_version, code_version(), memory.digest, memory.key_encoder,
                           memory.value_encoder, memory.sources, stable_hash(*(memory.thumbnails or [])))
        saved = _linked_from_cache(memory, target, Path(cache_dir) / "run-memories" / name)
    save_json(marker, {"digest": memory.digest})
    return saved


def _linked_from_cache(memory, target: Path, entry: Path) -> ShardedMemory:
    """``memory`` saved once into the cache folder ``entry`` and its files hard-linked into
    ``target``: a run into a fresh folder does not write the demo's 400 MB memories again.
    ravis writes every file by rename, never in place, so a link shares nothing that
    changes. The cached copy is checked against its manifest's sha256 before it is linked;
    a damaged one is saved again, with a warning naming the file."""
    with entry_lock(entry):
        done = entry / CONTENT_FILE
        fresh = not done.is_file()
        if not fresh:
            try:
                if load_json(done).get("digest") != memory.digest:
                    raise MemoryMismatchError(f"{done}: it holds another memory")
                ShardedMemory.open(entry, verify=True)
            except (MemoryMismatchError, ValueError, KeyError, OSError) as e:
                log.warning("saving the cached memory %s again: %s", entry, e)
                fresh = True
        if fresh:
            shutil.rmtree(entry, ignore_errors=True)
            memory.save(entry)
            save_json(done, {"digest": memory.digest})
        skip = {CONTENT_FILE, STAMPS_NAME}
        for src in sorted(p for p in entry.rglob("*") if p.is_file() and p.name not in skip):
            link_or_copy(src, target / src.relative_to(entry))
    return ShardedMemory.open(target)


def _copy_memory(memory: ShardedMemory, target: Path) -> ShardedMemory:
    """A self-contained copy of a memory folder, its index included (copied, not linked: an
    edit of the original in place must not reach the run)."""
    if (target / "manifest.json").is_file() and ShardedMemory.open(target).digest == memory.digest:
        return ShardedMemory.open(target)
    skip = {"manifest.json", STAMPS_NAME}  # the manifest is rewritten; stamps name the original's files
    for src in sorted(p for p in memory.memdir.rglob("*") if p.is_file() and p.name not in skip):
        _copy(src, target / src.relative_to(memory.memdir))
    manifest = dict(memory.manifest)  # paths outside the folder (a no-copy import) come inside
    manifest["shards"] = [_inside(s, memory.memdir, target) for s in manifest["shards"]]
    save_json(target / "manifest.json", manifest)
    return ShardedMemory.open(target, verify=True)


def _inside(shard: dict, memdir: Path, target: Path) -> dict:
    files = {}
    for kind, entry in shard["files"].items():
        path = Path(entry["path"])
        if path.is_absolute():
            rel = Path("shards") / f"{shard['name']}{''.join(path.suffixes[-2:]) or path.suffix}"
            _copy(path, target / rel)
            entry = {**entry, "path": str(rel)}
        files[kind] = entry
    return {**shard, "files": files}


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _link_same_files(memory: ShardedMemory, run_dir: Path, memory_dir_name: str) -> None:
    """Hard-links this memory's files to identical ones (same sha256) that another experiment
    of the run saved: the demo's B and C share their 60k keys."""
    mine = {e["sha256"]: memory.memdir / e["path"] for s in memory.manifest["shards"]
            for e in s["files"].values()}
    for other in sorted(run_dir.glob(f"*/{memory_dir_name}/*/manifest.json")):
        if other.parent == memory.memdir:
            continue
        for s in load_json(other)["shards"]:
            for e in s["files"].values():
                src, dst = other.parent / e["path"], mine.get(e["sha256"])
                if dst is not None and src.is_file() and not _same_file(src, dst):
                    link_or_copy(src, dst)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def open_parts(folder: Path, info: dict) -> ComposedMemory:
    """The memory an experiment was trained with, from the paths and digests in its
    serving.json ``info``; every part's files are checked against their checksums.

    Raises:
        FileNotFoundError: a part has gone (named, with the path the run refers to).
        MemoryMismatchError: a part's digest changed since training, or a file is damaged.
    """
    parts = []
    for part in info["memory"]["parts"]:
        path = Path(part["path"]) if Path(part["path"]).is_absolute() else Path(folder) / part["path"]
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"memory {part['spec']!r} of {folder} has gone: no memory at "
                                    f"{path}; restore it there or rerun the experiment")
        memory = ShardedMemory.open(path, verify=True)
        if memory.digest != part["digest"]:
            raise MemoryMismatchError(f"memory {part['spec']!r} at {path} changed since {folder} was "
                                      f"trained (manifest digest {memory.digest}, the run used "
                                      f"{part['digest']}); rerun the experiment")
        parts.append((part["spec"], memory))
    return compose(parts, info["memory"]["class_names"])
