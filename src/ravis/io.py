"""Small file helpers shared by every cache and output: atomic writes, hashing, JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InputError


def default_cache_dir() -> Path:
    """Where ravis caches models, embeddings, neighbours: $RAVIS_CACHE or ~/.cache/ravis."""
    return Path(os.environ.get("RAVIS_CACHE", Path.home() / ".cache" / "ravis"))


def default_data_dir() -> Path:
    """Where scripts/setup.sh puts downloaded collections (the emoji packages):
    $RAVIS_DATA or ~/.local/share/ravis. Not under the cache, which tests and users point
    elsewhere or wipe: this data is fetched once per machine."""
    return Path(os.environ.get("RAVIS_DATA") or Path.home() / ".local" / "share" / "ravis")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` only on success.

    A crash or an exception leaves ``path`` as it was (absent or the previous version).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates the file 0600 whatever the umask; give it what open() would have
        os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~current_umask())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # a write through a file object names no file: name it
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc); elsewhere
    it is set and put back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_npy(path: Path | str, array: np.ndarray) -> None:
    """np.save, atomically (the temporary name must not get numpy's automatic .npy suffix)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path | str, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy array ({e})") from e


def save_json(path: Path | str, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def to_json(obj) -> str:
    """``obj`` as JSON, numpy scalars and arrays as plain numbers and lists."""
    return json.dumps(obj, default=_json_default)


def load_json(path: Path | str):
    try:
        # bytes, not read_text(): json.loads reads UTF-8 whatever the locale's encoding
        return json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: invalid JSON ({e})") from e


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def stable_hash(*parts, n: int = 16) -> str:
    """A short hex digest of JSON-able parts and byte strings, stable across runs."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        if isinstance(p, (bytes, bytearray, memoryview)):
            h.update(bytes(p))
        elif isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode())
            # the array's buffer as it is: no copy (a 60k-row memory is 300 MB)
            h.update(np.ascontiguousarray(p).reshape(-1).view(np.uint8))
        else:
            h.update(json.dumps(p, sort_keys=True, default=_json_default).encode())
        h.update(b"\x00")
    return h.hexdigest()[:n]


def sha256_file(path: Path | str) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class VerifiedStamps:
    """Files already checked against their sha256, remembered by (size, mtime, inode).

    Hashing a many-GB memory or index every time it is opened costs minutes; a file whose
    size, modification time and inode are those it had when it last hashed right is taken
    as unchanged (as git's index trusts stat data), and any change re-hashes it. The stamps
    live in a JSON file beside the data; where that folder is read-only every open hashes.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self._stamps = load_json(self.path) if self.path.is_file() else {}
        except ValueError:  # a damaged stamp file only costs re-hashing
            self._stamps = {}
        self._dirty = False

    @staticmethod
    def _stat(path: Path) -> list:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def matches(self, path: Path | str, sha256: str, *, trust_stamps: bool = True) -> bool:
        """Whether the file's content hashes to ``sha256`` (from the stamp where it holds)."""
        path = Path(path)
        key, stat = str(path.resolve()), self._stat(path)
        if trust_stamps and self._stamps.get(key) == [*stat, sha256]:
            return True
        if sha256_file(path) != sha256:
            return False
        # A file rewritten within the filesystem's timestamp resolution of this check could
        # keep its (size, mtime, inode): stamp only files older than that (git's rule).
        if stat[1] < time.time_ns() - 2_000_000_000:
            self._stamps[key], self._dirty = [*stat, sha256], True
        return True

    def save(self) -> None:
        if not self._dirty:
            return
        try:
            save_json(self.path, self._stamps)
            self._dirty = False
        except OSError:  # read-only folder: next open hashes again
            pass


def link_or_copy(src: Path | str, dst: Path | str) -> bool:
    """``dst`` becomes ``src``'s content, atomically: a hard link where the filesystem allows
    (no copy of a many-GB file), else a copy. True if linked. A link shares ``src``'s inode,
    so its permissions are left as they are (``atomic_path`` would chmod the shared file)."""
    import shutil

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or links not allowed
        with atomic_path(dst) as copy:
            shutil.copyfile(src, copy)
        return False
    try:
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return True


class FolderBusyError(RuntimeError):
    """Another process holds the lock of a folder this one would write."""


@contextlib.contextmanager
def exclusive_lock(path: Path | str, *, wait: bool = False, busy: str = "",
                   error: type[Exception] = FolderBusyError) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created if absent) while the block runs. It dies
    with its process, so a killed writer never blocks the rerun. ``wait=False`` raises
    ``error`` with the message ``busy`` when another process holds it."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise error(busy or f"{path} is held by another process") from None
        yield


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Silences what C++ libraries print to stdout and stderr (faiss's "resizing ... bytes"
    and "IO_FLAG_ONDISK_SAME_DIR: ..." lines) while the block runs, where RAVIS_QUIET is
    set (``--quiet``; it also reaches Ray workers). Python's own output is flushed first and
    goes on as before after the block."""
    if not os.environ.get("RAVIS_QUIET"):
        yield
        return
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
