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

    complete.json                written last: every output's size and sha256

A memory folder the run read (``ravis memory build`` / ``import``) is referred to by path
and manifest digest, not copied: :func:`open_run_memory` refuses one that has gone or whose
digest changed since training, naming it.

A folder is complete or refused: ``ravis run`` removes complete.json (and any temporary
file a killed writer left) before it writes anything, and writes it after everything else.
:func:`open_run` is the one way in for ``eval``, ``predict``, ``serve`` and ``report``: it
refuses a folder without the record, saying how to finish it, and checks each file a verb
reads against the sha256 the record holds.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from .cache import code_version, entry_lock
from .config import RunConfig, read_yaml, resolve_file
from .errors import InputError
from .io import atomic_path, link_or_copy, load_json, save_json, sha256_file, stable_hash
from .memory.base import MemoryMismatchError
from .memory.compose import ComposedMemory, compose, source_name
from .memory.edits import LOG_NAME as EDIT_LOG
from .memory.sharded import STAMPS_NAME, ShardedMemory

log = logging.getLogger(__name__)

SERVING_FILE = "serving.json"
MEMORY_DIR = "memory"
CONTENT_FILE = "content.json"  # the digest of the in-RAM memory a saved part holds
COMPLETE_FILE = "complete.json"
# Not in the completion record: the record and the lock themselves, the memory parts (their
# manifests hold their own checksums, checked by open_run_memory), and what ``ravis report``
# draws from the record's files afterwards.
_UNRECORDED = {COMPLETE_FILE, ".lock", "report.html"}
_UNRECORDED_DIRS = {MEMORY_DIR, "report"}
FORMAT_VERSION = 2


class RunFolderError(InputError):
    """A run folder that is incomplete, from another ravis version, or whose memory changed."""


def experiment_dir(run_dir: Path | str, name: str) -> Path:
    return Path(run_dir) / name.replace("/", "-")


def load_config(run_dir: Path | str) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a ravis run folder (no config.yaml)")
    return resolve_file(path, read_yaml(path))


def begin_run(run_dir: Path) -> None:
    """Marks ``run_dir`` incomplete before a run writes to it, and removes the temporary files
    killed writers left (the caller holds the folder's lock: nobody else is writing)."""
    run_dir = Path(run_dir)
    (run_dir / COMPLETE_FILE).unlink(missing_ok=True)
    for tmp in run_dir.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()


def _recorded_files(run_dir: Path) -> list[Path]:
    out = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if (path.is_file() and rel.name not in _UNRECORDED and not rel.name.endswith(".tmp")
                and not rel.name.lstrip(".").startswith(EDIT_LOG)  # edits come after the run
                and not any(part in _UNRECORDED_DIRS for part in rel.parts[:-1])):
            out.append(path)
    return out


def finish_run(run_dir: Path) -> None:
    """Writes the completion record, last: the size and sha256 of every output file."""
    run_dir = Path(run_dir)
    files = {p.relative_to(run_dir).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _recorded_files(run_dir)}
    save_json(run_dir / COMPLETE_FILE, {"format": 1, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "files": files})


def open_run(run_dir: Path | str) -> tuple[RunConfig, dict]:
    """(config, completion record) of a finished run folder, its config checked against the
    record; check the other files a verb reads with :func:`verify_files`.

    Raises:
        FileNotFoundError: not a run folder.
        RunFolderError: the run did not finish, or its config changed since.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: not a ravis run folder (no config.yaml)")
    record_path = run_dir / COMPLETE_FILE
    if not record_path.is_file():
        raise RunFolderError(f"{run_dir}: the run did not finish (no {COMPLETE_FILE}); run the same "
                             f"`ravis run ... --out {run_dir}` again to finish it (it resumes)")
    record = load_json(record_path)
    verify_files(run_dir, record, ["config.yaml"])
    return load_config(run_dir), record


def pick_experiment(cfg: RunConfig, run_dir: Path | str, name: str | None):
    """The experiment ``name`` of a run (None: its first), or a ValueError listing them."""
    names = [e.name for e in cfg.experiments]
    exp = next((e for e in cfg.experiments if e.name == (name or names[0])), None)
    if exp is None:
        raise InputError(f"{run_dir}: no experiment {name!r}; it has {names}")
    return exp


def verify_files(run_dir: Path | str, record: dict, rels) -> None:
    """Checks the files ``rels`` (relative to ``run_dir``) against the sizes and sha256 the
    completion record holds; a missing, changed or unrecorded file is a RunFolderError."""
    run_dir, files = Path(run_dir), record.get("files", {})
    for rel in rels:
        entry, path = files.get(rel), run_dir / rel
        if entry is None:
            raise RunFolderError(f"{path}: not written by the run that finished {run_dir}; rerun it")
        if not path.is_file():
            raise RunFolderError(f"{path}: missing, the run wrote it; rerun `ravis run` to rewrite it")
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise RunFolderError(f"{path}: changed or damaged since the run finished (its sha256 "
                                 f"is not the {entry['sha256'][:16]}... the run recorded); rerun "
                                 "`ravis run` to rewrite it")


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


def save_memory_part(folder: Path, spec: str, memory, run_dir: Path, copy: bool,
                     cache_dir: Path | None = None) -> dict:
    """Where serving finds one memory part: a memory made in RAM is saved under
    ``folder/memory/<part>`` (with ``cache_dir``, saved once into the cache and hard-linked
    from there); a memory folder is referred to (or, with ``copy``, copied in). Returns the
    part's serving.json entry."""
    target = Path(folder) / MEMORY_DIR / part_slug(spec)
    if isinstance(memory, ShardedMemory) and not copy:
        return {"spec": spec, "path": str(memory.memdir.resolve()), "digest": memory.digest,
                "rows": len(memory), "copied": False}
    if isinstance(memory, ShardedMemory):
        saved = _copy_memory(memory, target)
    else:
        saved = _save_if_changed(memory, target, cache_dir)
        _link_same_files(saved, Path(run_dir))
    return {"spec": spec, "path": str(target.relative_to(folder)), "digest": saved.digest,
            "rows": len(saved), "copied": isinstance(memory, ShardedMemory)}


def _save_if_changed(memory, target: Path, cache_dir: Path | None = None) -> ShardedMemory:
    """ArrayMemory.save unless ``target`` already holds this memory (a rerun rewrites nothing)."""
    marker = target / CONTENT_FILE
    if marker.is_file() and load_json(marker).get("digest") == memory.digest:
        return ShardedMemory.open(target)
    if cache_dir is None:
        saved = memory.save(target)
    else:
        # named by everything the saved files hold, not only what the digest covers
        name = stable_hash(FORMAT_VERSION, code_version(), memory.digest, memory.key_encoder,
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


def open_edited_memory(folder: Path, info: dict):
    """The experiment's memory (:func:`open_run_memory`) with the edits of its log applied
    (:mod:`ravis.memory.edits`), skipping those a compaction already folded into it."""
    from .memory.edits import EditedMemory

    return EditedMemory(open_run_memory(folder, info), Path(folder) / EDIT_LOG,
                        folded=info["memory"].get("edits_folded", 0),
                        base_class_counts=info["memory"].get("class_counts"))


__all__ = ["COMPLETE_FILE", "FORMAT_VERSION", "MEMORY_DIR", "RunFolderError", "SERVING_FILE",
           "begin_run", "experiment_dir", "finish_run", "load_config", "open_edited_memory", "open_run",
           "pick_experiment",
           "open_run_memory",
           "read_serving", "save_memory_part", "verify_files", "write_serving"]
