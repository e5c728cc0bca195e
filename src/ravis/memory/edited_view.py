"""Editing a memory without retraining: a base memory with the edits of its log applied.

A finished run's memory (the parts it was trained with, checked against their digests) is
the *base*; an edit never changes a byte of it. Edits are records in a log beside the run
(:mod:`ravis.memory.edit_log`). :class:`EditedMemory` replays the log and offers the Memory
protocol: base rows keep their numbers, added entries follow them, and deleted rows keep
theirs but are never returned by the index that follows the edits
(:class:`ravis.index.edited_index.EditedIndex`). ``ravis memory compact`` folds the log into new
shards.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..io import stable_hash
from .base import META_COLUMNS, MemoryMismatchError, as_rows, check_query_encoder
from .edit_log import EditLog, decode_array


class EditError(InputError):
    """An edit that cannot be applied (unknown id or class, bad arguments); nothing changed."""


@dataclass
class _Added:
    """The entries added by edits, in growing arrays (edits are few next to the base)."""

    keys: np.ndarray  # (capacity, dim) float32; the first n are used
    values: np.ndarray  # (capacity, value_dim) float32
    labels: np.ndarray  # (capacity,) int64
    ids: list
    texts: list
    sources: list
    thumbnails: list

    @property
    def n(self) -> int:
        return len(self.ids)

    def append(self, key, value, label: int, id_: str, text: str, source: str, thumb: bytes):
        if self.n == len(self.keys):  # double: appends stay amortised O(1)
            cap = max(16, 2 * len(self.keys))
            self.keys = np.resize(self.keys, (cap, self.keys.shape[1]))
            self.values = np.resize(self.values, (cap, self.values.shape[1]))
            self.labels = np.resize(self.labels, cap)
        self.keys[self.n], self.values[self.n], self.labels[self.n] = key, value, label
        self.ids.append(id_)
        self.texts.append(text)
        self.sources.append(source)
        self.thumbnails.append(thumb)


class EditedMemory:
    """A base memory with the edits of its log applied (the Memory protocol, rows
    ``[0, len(base))`` the base's, then the added ones). Thread-safe for one writer and
    many readers when callers hold :attr:`lock` around edits and the reads that must see
    one state (a prediction)."""

    def __init__(self, base, log_path: Path | str | None = None, folded: int = 0,
                 base_class_counts: dict[str, int] | None = None):
        """``folded``: records up to this seq are already in ``base`` (``ravis memory compact``
        wrote them into it) and are skipped; new records are numbered after it.
        ``base_class_counts``: the base's labelled entries of some classes (see
        :meth:`class_counts`)."""
        self.base = base
        self._base_counts = dict(base_class_counts or {})
        self.base_digest = base.digest[:16]  # every record names the memory it edits
        self.key_encoder, self.value_encoder = base.key_encoder, base.value_encoder
        self.base_count = len(base)
        self._class_names = list(base.class_names)
        # live labelled entries per class that the edits added (or removed, if negative),
        # kept as each edit applies so that class_counts() never scans the memory
        self._label_change = np.zeros(len(self._class_names), np.int64)
        self._added = _Added(np.zeros((0, base.dim), np.float32),
                             np.zeros((0, base.value_dim), np.float32), np.zeros(0, np.int64),
                             [], [], [], [])
        self._deleted = np.zeros(self.base_count, dtype=bool)
        self._changed: dict[int, tuple[int, str | None, np.ndarray | None]] = {}  # relabels
        self._added_rows: dict[str, int] = {}
        self._base_ids: _IdLookup | None = None
        self._history = hashlib.sha256()
        self.lock = threading.RLock()
        self.log = EditLog(log_path) if log_path is not None else None
        self.applied_bytes, self.seq, self.folded = 0, int(folded), int(folded)
        self.refresh()

    # -- replay --------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Applies records appended to the log since the last call (by this process or
        another); returns how many."""
        if self.log is None:
            return 0
        with self.lock:
            records, end = self.log.read(self.applied_bytes)
            records = [r for r in records if r["seq"] > self.folded]
            for record in records:
                if record.get("base") != self.base_digest:
                    raise MemoryMismatchError(
                        f"{self.log.path}: edit {record['seq']} was made to another memory "
                        f"(digest {record.get('base')}, this one is {self.base_digest}): the run's "
                        "memory changed since (a rerun?); move the log away to serve it unedited")
                self._apply(record)
            self.applied_bytes = end
            return len(records)

    def edit(self, op: str, who: str = "", **args) -> dict:
        """Validates, logs and applies one edit; returns its record. Raises EditError (the
        memory and the log unchanged) for an edit that does not apply."""
        if self.log is None:
            raise EditError("this memory has no edit log")
        with self.lock, self.log.locked():
            self._check_not_folded()
            self.refresh()  # another writer's records first: ids and classes are theirs too
            record = {"seq": self.seq + 1, "time": round(time.time(), 3), "who": who,
                      "base": self.base_digest, "op": op, **args}
            self._check(record)
            end = self.log.append(record, self.applied_bytes)
            self._apply(record)
            self.applied_bytes = end
            return record

    def add_many(self, entries: list[dict], who: str = "") -> list[dict]:
        """Adds many entries (each the arguments of an ``add`` edit) as one write and one
        fsync: all are checked first, and none is applied unless all are valid."""
        if self.log is None:
            raise EditError("this memory has no edit log")
        with self.lock, self.log.locked():
            self._check_not_folded()
            self.refresh()
            ids = [e["id"] for e in entries]
            if len(set(ids)) != len(ids):
                raise EditError("the entries to add repeat an id")
            records = []
            for j, e in enumerate(entries):
                record = {"seq": self.seq + 1 + j, "time": round(time.time(), 3), "who": who,
                          "base": self.base_digest, "op": "add", **e}
                self._check(record)
                records.append(record)
            end = self.log.append_many(records, self.applied_bytes)
            for record in records:
                self._apply(record)
            self.applied_bytes = end
            return records

    def _check_not_folded(self) -> None:
        """Refuses edits to a memory compacted since it was opened: they would be logged for
        the old base, which the run no longer serves (``ravis memory compact`` renames the
        log to ``<log>.folded-<seq>``)."""
        for path in self.log.path.parent.glob(f"{self.log.path.name}.folded-*"):
            seq = path.name.rsplit("-", 1)[-1]
            if seq.isdigit() and int(seq) > self.folded:
                raise EditError(f"{self.log.path.parent}: the memory was compacted (edits up to "
                                f"{int(seq)} folded into it) after this model was loaded; load it "
                                "again (restart the server) to edit it")

    def _check(self, r: dict) -> None:
        """Raises EditError unless ``r`` would apply (nothing is changed here)."""
        op = r["op"]
        if op == "add":
            if r["id"] in self._added_rows or self._lookup([r["id"]])[0] >= 0:
                raise EditError(f"the memory already has an entry {r['id']!r}")
            if r["label"] is None and not r["text"]:
                raise EditError("an added entry needs a label or a caption")
            decode_array(r["key"], self.dim, "key")
            decode_array(r["value"], self.value_dim, "value")
        elif op == "delete":
            rows = self._lookup(r["ids"])
            missing = [i for i, row in zip(r["ids"], rows) if row < 0]
            if missing:
                raise EditError(f"no live memory entry {missing[0]!r}"
                                + (f" (and {len(missing) - 1} more unknown ids)" if len(missing) > 1 else ""))
        elif op == "delete_class":
            if r["name"] not in self._class_names:
                raise EditError(f"no class {r['name']!r} in the memory")
        elif op == "delete_source":
            pass  # a source with no live entry deletes nothing, as a class without entries does
        elif op == "relabel":
            ids = [c[0] for c in r["changes"]]
            missing = [i for i, row in zip(ids, self._lookup(ids)) if row < 0]
            if missing:
                raise EditError(f"no live memory entry {missing[0]!r} to relabel")
            unknown = [c[1] for c in r["changes"] if c[1] not in self._class_names]
            valueless = [c[1] for c in r["changes"] if c[2] is not None and c[1] not in r.get("values", {})]
            if valueless:
                raise EditError(f"relabel to {valueless[0]!r} of a label-prompt entry without its value")
            if unknown:
                raise EditError(f"unknown class {unknown[0]!r} for a relabel; known: "
                                f"{', '.join(self._class_names[:20])}")

    def _apply(self, r: dict) -> None:
        op = r["op"]
        if op == "add":
            label = -1 if r["label"] is None else self._class_index(r["label"])
            row = self.base_count + self._added.n
            self._added.append(decode_array(r["key"], self.dim, "key"),
                               decode_array(r["value"], self.value_dim, "value"), label, r["id"],
                               r["text"], r["source"], base64.b64decode(r["thumbnail"]))
            if row >= len(self._deleted):  # grown by doubling: a copy per add was O(rows) each
                self._deleted = np.concatenate([self._deleted, np.zeros(max(16, len(self._deleted)), bool)])
            self._added_rows[r["id"]] = row
            if label >= 0:
                self._label_change[label] += 1
        elif op == "delete":
            rows = np.unique(self._lookup(r["ids"]))
            rows = rows[rows >= 0]
            self._count_labels(rows, -1)
            self._deleted[rows] = True
        elif op == "delete_class":
            self._delete_where(lambda rows: self.labels_at(rows) == self._class_names.index(r["name"]))
        elif op == "delete_source":
            self._delete_where(lambda rows: np.array(self.meta_at(rows, ["source"])["source"]) == r["name"])
        elif op == "relabel":
            values = {label: decode_array(v, self.value_dim, f"value of {label}")
                      for label, v in r.get("values", {}).items()}
            rows = self._lookup([c[0] for c in r["changes"]])
            live = np.unique(rows[rows >= 0])
            self._count_labels(live, -1)  # their labels before, then after
            for row, (_, label, text) in zip(rows, r["changes"]):
                if row >= 0:
                    self._changed[int(row)] = (self._class_names.index(label), text,
                                               values[label] if text is not None else None)
            self._changed_rows = np.fromiter(self._changed, np.int64, len(self._changed))
            self._count_labels(live, +1)
        self.seq = int(r["seq"])
        self._history.update(json.dumps(r, sort_keys=True).encode())

    def _class_index(self, name: str) -> int:
        if name not in self._class_names:  # a class the classifier never saw: new in memory
            self._class_names.append(name)
            self._label_change = np.append(self._label_change, 0)
        return self._class_names.index(name)

    def _count_labels(self, rows, sign: int) -> None:
        """Adds ``sign`` to the label change of each of ``rows``' labels (as they are now)."""
        labels = self.labels_at(rows)
        self._label_change += sign * np.bincount(labels[labels >= 0], minlength=len(self._class_names))

    def _delete_where(self, test, block: int = 65536) -> None:
        for start in range(0, len(self), block):
            rows = np.arange(start, min(start + block, len(self)))
            hit = test(rows) & ~self._deleted[rows]
            self._count_labels(rows[hit], -1)
            self._deleted[rows[hit]] = True

    # -- ids -----------------------------------------------------------------------------------
    def _lookup(self, ids: Sequence[str]) -> np.ndarray:
        """The live row of each id, -1 where none (unknown or deleted)."""
        out = np.full(len(ids), -1, dtype=np.int64)
        rest = []
        for j, i in enumerate(ids):
            if i in self._added_rows:
                out[j] = self._added_rows[i]
            else:
                rest.append(j)
        if rest:
            if self._base_ids is None:  # built on the first edit by id, once
                self._base_ids = _IdLookup(self.base)
            out[rest] = self._base_ids.rows_of([ids[j] for j in rest])
        found = out >= 0
        out[found & self._deleted[np.where(found, out, 0)]] = -1
        return out

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        return self._lookup(list(ids))

    # -- sizes and identity ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.base_count + self._added.n

    @property
    def live_count(self) -> int:
        return len(self) - int(self._deleted.sum())

    @property
    def deleted_count(self) -> int:
        return int(self._deleted.sum())

    def is_live(self, rows) -> np.ndarray:
        return ~self._deleted[as_rows(rows, len(self))]

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def value_dim(self) -> int:
        return self.base.value_dim

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def class_counts(self) -> dict[str, int]:
        """Live labelled entries of each class whose count is known without a pass over the
        base: a class the base does not list (edits brought it in) and one whose base count
        ``base_class_counts`` gives (a compaction records its classes beyond the trained
        ones). The base's count plus what the edits changed, which each edit keeps as it
        applies."""
        with self.lock:
            listed = len(self.base.class_names)
            known = {**{c: 0 for c in self._class_names[listed:]},
                     **{c: int(n) for c, n in self._base_counts.items() if c in self._class_names}}
            return {c: n + int(self._label_change[self._class_names.index(c)]) for c, n in known.items()}

    @property
    def digest(self) -> str:
        return stable_hash(self.base.digest, self._history.hexdigest())

    @property
    def key_digest(self) -> str:
        return stable_hash(self.base.key_digest, self._history.hexdigest())

    def check_query_encoder(self, encoder_fingerprint: str, dim: int) -> None:
        check_query_encoder(self, encoder_fingerprint, dim, name="the edited memory")

    # -- rows ----------------------------------------------------------------------------------
    def _split(self, rows):
        rows = as_rows(rows, len(self))
        base = rows < self.base_count
        return rows, np.flatnonzero(base), np.flatnonzero(~base)

    def keys_at(self, rows) -> np.ndarray:
        rows, b, a = self._split(rows)
        out = np.empty((len(rows), self.dim), dtype=self.dtype)
        if len(b):
            out[b] = self.base.keys_at(rows[b])
        out[a] = self._added.keys[rows[a] - self.base_count]
        return out

    def values_at(self, rows) -> np.ndarray:
        rows, b, a = self._split(rows)
        out = np.empty((len(rows), self.value_dim), dtype=self.dtype)
        if len(b):
            out[b] = self.base.values_at(rows[b])
        out[a] = self._added.values[rows[a] - self.base_count]
        for j in self._changed_positions(rows):
            value = self._changed[int(rows[j])][2]
            if value is not None:
                out[j] = value
        return out

    def labels_at(self, rows) -> np.ndarray:
        rows, b, a = self._split(rows)
        out = np.empty(len(rows), dtype=np.int64)
        if len(b):
            out[b] = self.base.labels_at(rows[b])
        out[a] = self._added.labels[rows[a] - self.base_count]
        for j in self._changed_positions(rows):
            out[j] = self._changed[int(rows[j])][0]
        return out

    def meta_at(self, rows, columns: Sequence[str]) -> dict[str, list]:
        unknown = set(columns) - set(META_COLUMNS)
        if unknown:
            raise KeyError(f"unknown memory metadata columns {sorted(unknown)}; known: {META_COLUMNS}")
        rows, b, a = self._split(rows)
        out: dict[str, list] = {c: [None] * len(rows) for c in columns}
        if len(b):
            got = self.base.meta_at(rows[b], columns)
            for c in columns:
                for j, v in zip(b, got[c]):
                    out[c][j] = v
        fields = {"id": self._added.ids, "text": self._added.texts, "source": self._added.sources,
                  "thumbnail": self._added.thumbnails}
        for j in a:
            for c in columns:
                out[c][j] = fields[c][rows[j] - self.base_count]
        if "text" in columns:
            for j in self._changed_positions(rows):
                text = self._changed[int(rows[j])][1]
                if text is not None:
                    out["text"][j] = text
        return out

    def _changed_positions(self, rows: np.ndarray) -> np.ndarray:
        if not self._changed:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.isin(rows, self._changed_rows))

    @property
    def parts(self) -> list[tuple[str, "EditedMemory"]]:
        return [("", self)]

    def added_keys(self) -> np.ndarray:
        """(added, dim) float32 keys of the entries edits added, in row order."""
        return self._added.keys[:self._added.n]

    def key_blocks(self) -> list[np.ndarray]:
        return self.base.key_blocks() + ([self.added_keys()] if self._added.n else [])

    def verify(self) -> None:
        self.base.verify()
        if self.log is not None:
            self.log.read()

    def live_rows(self, start: int, stop: int) -> np.ndarray:
        """The live rows of ``[start, stop)`` (what compaction copies)."""
        rows = np.arange(start, min(stop, len(self)))
        return rows[~self._deleted[rows]]


class _IdLookup:
    """id -> base row for a memory of any size: the Python hash of every id, sorted, with
    its row (16 bytes a row, no Python object per row), built once in blocks; a hit is
    confirmed by reading the row's id (hashes can collide)."""

    def __init__(self, memory, block: int = 65536):
        self.memory = memory
        hashes = np.empty(len(memory), dtype=np.int64)
        for start in range(0, len(memory), block):
            rows = np.arange(start, min(start + block, len(memory)))
            hashes[rows] = [hash(i) for i in memory.meta_at(rows, ["id"])["id"]]
        self.order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[self.order]

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids),) base row of each id, -1 where none; one metadata read for all the
        candidates (a relabel of 24k entries is one lookup, not 24k)."""
        ids = list(ids)
        h = np.fromiter((hash(i) for i in ids), np.int64, len(ids))
        lo = np.searchsorted(self.hashes, h, side="left")
        hi = np.searchsorted(self.hashes, h, side="right")
        owner = np.repeat(np.arange(len(ids)), hi - lo)  # (candidates,) which id each is for
        at = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(owner) else \
            np.zeros(0, np.int64)
        rows = self.order[at]
        out = np.full(len(ids), -1, dtype=np.int64)
        if len(rows):
            got = self.memory.meta_at(rows, ["id"])["id"]
            for j, r, g in zip(owner, rows, got):
                if g == ids[j] and out[j] < 0:
                    out[j] = r
        return out
