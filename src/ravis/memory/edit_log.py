"""The edit log: an append-only file of edit records over a base memory.

One line per edit, ``<first 16 hex of the sha256 of JSON> <JSON>\\n``; the JSON holds ``seq``,
``time``, ``who``, ``base`` (the first 16 hex of the edited memory's digest), ``op`` and the
op's arguments:

    add            id, label (a class name or null), text, source, key and value (base64
                   float32), thumbnail (base64 JPEG, "" for none)
    delete         ids: entries of the base or added earlier
    delete_class   name: every live entry with that label
    delete_source  name: every live entry from that source
    relabel        changes: [[id, label, text or null]], values: {label: base64}; a change
                   with a text (a label-prompt entry, whose text names its class) also takes
                   its label's value

A record is one ``write`` followed by ``fsync``: a crash can only tear the last line, which
:meth:`EditLog.read` detects (no newline, a bad checksum or bad JSON) and drops with a
warning; the next append cuts it off first. A damaged record followed by good ones is an
error naming the log and the line: replaying past it would serve a memory nobody edited into
being. :class:`ravis.memory.edited_view.EditedMemory` replays it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..io import exclusive_lock
from .base import MemoryMismatchError

log = logging.getLogger(__name__)

OPS = ("add", "delete", "delete_class", "delete_source", "relabel")


def encode_array(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode()


def decode_array(s: str, dim: int, what: str) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(s), dtype=np.float32)
    if a.shape != (dim,):
        raise InputError(f"{what}: {a.size} numbers, expected {dim}")
    return a


def _line(record: dict) -> bytes:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return f"{hashlib.sha256(body.encode()).hexdigest()[:16]} {body}\n".encode()


def _parse(line: bytes) -> dict | None:
    """The record of one complete line, or None if it is damaged."""
    try:
        text = line.decode()
        digest, body = text[:16], text[17:-1]
        if text[16] != " " or hashlib.sha256(body.encode()).hexdigest()[:16] != digest:
            return None
        record = json.loads(body)
    except (UnicodeDecodeError, IndexError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("op") in OPS else None


class EditLog:
    """The append-only file of edit records (see the module doc)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def read(self, offset: int = 0) -> tuple[list[dict], int]:
        """(records from byte ``offset`` on, the offset after the last good one). A torn
        last line is dropped with a warning.

        Raises:
            MemoryMismatchError: a damaged line with good lines after it.
        """
        if not self.path.exists():
            return [], 0
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read()
        records, at, lines = [], offset, data.split(b"\n")
        for n, raw in enumerate(lines[:-1]):  # every piece but the last ended with a newline
            record = _parse(raw + b"\n")
            if record is None:
                if any(lines[n + 1:]):
                    raise MemoryMismatchError(
                        f"{self.path}: edit record at byte {at} is damaged and later records "
                        "follow it; the log cannot be replayed (restore it from a backup, or "
                        "remove it to serve the memory unedited)")
                log.warning("%s: dropping a torn last edit record at byte %d (a crash while it "
                            "was written); it was never applied", self.path, at)
                return records, at
            records.append(record)
            at += len(raw) + 1
        if lines[-1]:
            log.warning("%s: dropping a torn last edit record at byte %d (a crash while it was "
                        "written); it was never applied", self.path, at)
        return records, at

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time (a server and `ravis memory edit` may share a log)."""
        with exclusive_lock(self.path.with_name(f".{self.path.name}.lock"), wait=True):
            yield

    def append(self, record: dict, good: int) -> int:
        """Appends one record after byte ``good`` (cutting off a torn tail); returns the new
        end. The caller holds :meth:`locked` and has read the log up to ``good``."""
        return self.append_many([record], good)

    def append_many(self, records: list[dict], good: int) -> int:
        """Appends records in one write and one fsync (see :meth:`append`). A crash inside
        tears at most the last line written; the whole lines before it are edits made."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(_line(r) for r in records)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_size != good:
                os.ftruncate(fd, good)
            os.lseek(fd, good, os.SEEK_SET)
            view = memoryview(data)
            while view:  # a large write may be split
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return good + len(data)
