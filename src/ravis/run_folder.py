"""The run folder's format: what ``ravis run`` writes and every other verb reads.

    config.yaml                  the resolved config
    results.json, timings.json   the Table-1 numbers and details; where the time went
    <experiment>/                one folder per experiment (name with "/" -> "-")
        <method>.safetensors     trained weights (no pickle)
        predictions.npz          test logits per method, neighbours, similarities, attention
        test_ids.json            ids of the test images, in the rows of predictions.npz
        test_thumbnails.parquet  id -> small image of each test image (the report's gallery)
        memory/<part>/           memory parts made from the experiment's own dataset (and, with
                                 --copy-memory, copies of the memory folders it read), each in
                                 the one on-disk memory format (ravis.memory.sharded)
        serving.json             class names, k, index spec, each method's post-hoc logit
                                 adjustment, and the memory: every part's path and digest

A memory folder the run read (``ravis memory build`` / ``import``) is referred to by path
and manifest digest, not copied: :func:`open_run_memory` refuses one that has gone or whose
digest changed since training, naming it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from .config import RunConfig, resolve
from .io import atomic_path, link_or_copy, load_json, save_json
from .memory.base import MemoryMismatchError
from .memory.compose import ComposedMemory, compose, source_name
from .memory.sharded import STAMPS_NAME, ShardedMemory

SERVING_FILE = "serving.json"
MEMORY_DIR = "memory"
FORMAT_VERSION = 2


class RunFolderError(ValueError):
    """A run folder that is incomplete, from another ravis version, or whose memory changed."""


def experiment_dir(run_dir: Path | str, name: str) -> Path:
    return Path(run_dir) / name.replace("/", "-")


def load_config(run_dir: Path | str) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a ravis run folder (no config.yaml)")
    return resolve(yaml.safe_load(path.read_text()))


def read_serving(folder: Path) -> dict:
    path = Path(folder) / SERVING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the experiment did not finish (rerun `ravis run`)")
    info = load_json(path)
    if info.get("format") != FORMAT_VERSION:
        raise RunFolderError(f"{path}: format {info.get('format')!r}, this ravis reads "
                             f"{FORMAT_VERSION}; rerun the experiment to update the folder")
    return info


def write_serving(folder: Path, info: dict) -> None:
    save_json(Path(folder) / SERVING_FILE, {"format": FORMAT_VERSION, **info})


def part_slug(spec: str) -> str:
    return source_name(spec).replace("/", "-")


def save_memory_part(folder: Path, spec: str, memory, run_dir: Path, copy: bool) -> dict:
    """Where serving finds one memory part: a memory made in RAM is saved under
    ``folder/memory/<part>``; a memory folder is referred to (or, with ``copy``, copied in).
    Returns the part's serving.json entry."""
    target = Path(folder) / MEMORY_DIR / part_slug(spec)
    if isinstance(memory, ShardedMemory) and not copy:
        return {"spec": spec, "path": str(memory.memdir.resolve()), "digest": memory.digest,
                "rows": len(memory), "copied": False}
    if isinstance(memory, ShardedMemory):
        saved = _copy_memory(memory, target)
    else:
        saved = _save_if_changed(memory, target)
        _link_same_files(saved, Path(run_dir))
    return {"spec": spec, "path": str(target.relative_to(folder)), "digest": saved.digest,
            "rows": len(saved), "copied": isinstance(memory, ShardedMemory)}


def _save_if_changed(memory, target: Path) -> ShardedMemory:
    """ArrayMemory.save unless ``target`` already holds this memory (a rerun rewrites nothing)."""
    marker = target / "content.json"
    if marker.is_file() and load_json(marker).get("digest") == memory.digest:
        return ShardedMemory.open(target)
    saved = memory.save(target)
    save_json(marker, {"digest": memory.digest})
    return saved


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


def _link_same_files(memory: ShardedMemory, run_dir: Path) -> None:
    """Hard-links this memory's files to identical ones (same sha256) that another experiment
    of the run saved: the demo's B and C share their 60k keys."""
    mine = {e["sha256"]: memory.memdir / e["path"] for s in memory.manifest["shards"]
            for e in s["files"].values()}
    for other in sorted(run_dir.glob(f"*/{MEMORY_DIR}/*/manifest.json")):
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


def open_run_memory(folder: Path, info: dict) -> ComposedMemory:
    """The memory an experiment was trained with, from the paths and digests in its
    serving.json; every part's files are checked against their checksums.

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


__all__ = ["FORMAT_VERSION", "MEMORY_DIR", "RunFolderError", "SERVING_FILE", "experiment_dir",
           "load_config", "open_run_memory", "read_serving", "save_memory_part", "write_serving"]
