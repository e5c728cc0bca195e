"""Entries of the content-keyed caches (embeddings, neighbours, models, thumbnails): one
writer at a time, and no byte returned that was not checked.

Every cache entry is named by a hash of what produced it, so two runs asking for the same
entry want the same bytes. Two rules keep a shared cache honest:

- :func:`entry_lock`: the run that computes an entry holds its lock while it checks, computes
  and writes it; a second run waits, then reads the finished entry instead of writing the
  same files beside the first (which could leave half of each).
- :func:`seal` and :func:`is_sealed`: a finished file gets a sidecar ``<name>.sha256`` with its
  size and sha256, written after it; a reader uses the file only when both agree. A flipped
  byte, a truncated or replaced file, or one the sidecar never saw is recomputed with a
  warning naming it, never used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Iterator

from .io import exclusive_lock, load_json, save_json, sha256_file, stable_hash

log = logging.getLogger(__name__)

SEAL_SUFFIX = ".sha256"


@contextlib.contextmanager
def entry_lock(path: Path | str) -> Iterator[None]:
    """Holds the lock of the cache entry ``path`` (a file or a folder), waiting for another
    process that holds it. The lock file ``.<name>.lock`` sits beside the entry."""
    path = Path(path)
    with exclusive_lock(path.parent / f".{path.name}.lock", wait=True):
        yield


def seal(path: Path | str) -> None:
    """Records the finished file's size and sha256 in its sidecar (written last)."""
    path = Path(path)
    save_json(_seal_path(path), {"bytes": path.stat().st_size, "sha256": sha256_file(path)})


def is_sealed(path: Path | str) -> bool:
    """Whether ``path`` is a finished cache file whose bytes match its seal. A file without a
    seal is not finished; a file that disagrees with its seal is damaged (logged, by name)."""
    path, side = Path(path), _seal_path(Path(path))
    if not (path.is_file() and side.is_file()):
        return False
    try:
        record = load_json(side)
        ok = (path.stat().st_size == record["bytes"] and sha256_file(path) == record["sha256"])
    except (ValueError, KeyError, TypeError, OSError) as e:
        log.warning("ignoring the cache file %s, recomputing it: its seal %s is unreadable (%s)",
                    path, side, e)
        return False
    if not ok:
        log.warning("ignoring the cache file %s, recomputing it: its bytes differ from the "
                    "sha256 recorded when it was written (damaged or changed)", path)
    return ok


def unseal(path: Path | str) -> None:
    """Removes a file's seal first, then the file: a reader never sees a seal without it."""
    path = Path(path)
    _seal_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


@functools.cache
def code_version() -> str:
    """A hash of the ravis package's Python source and the libraries that do its arithmetic,
    for cache entries that a code change could make wrong (a method's evaluation, a saved
    run memory). Computed once per process; a run calls it first, so an edit made while it
    runs is not mistaken for the code that ran."""
    import numpy as np
    import torch

    root = Path(__file__).resolve().parent
    sources = [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*.py"))]
    return stable_hash([name for name, _ in sources], *[text for _, text in sources],
                       torch.__version__, torch.version.cuda, np.__version__)


def _seal_path(path: Path) -> Path:
    return path.with_name(path.name + SEAL_SUFFIX)
