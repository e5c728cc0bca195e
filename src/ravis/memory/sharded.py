"""The sharded on-disk memory: one key, value and metadata file per shard, and a manifest.

::

    MEMDIR/manifest.json               format, encoders, dims, dtype, count, class_names,
                                       shards [{name, input, rows, skipped, files}], failed_shards
    MEMDIR/shards/NNNNN.keys.npy       (rows, dim) unit-normalised image embeddings
    MEMDIR/shards/NNNNN.values.npy     (rows, value_dim) caption embeddings
    MEMDIR/shards/NNNNN.meta.parquet   id, text, source, label, thumbnail (64 px JPEG or PNG), json,
                                       content (blake2b of the image's bytes)

Keys and values are float16 or float32 ``.npy`` files, memory-mappable. Global row ids are
the shards concatenated in manifest (name) order: row r of shard i is ``offset_i + r``.
Each file entry carries its size and sha256, so :meth:`ShardedMemory.verify` and a resumed
build can tell a finished shard from a damaged or half-written one. Every file, the
manifest included, is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..config import MEMORY_DTYPES
from ..errors import InputError
from ..index.multi import by_part
from ..io import VerifiedStamps, atomic_path, load_json, save_json, save_npy, sha256_file, stable_hash
from .base import META_COLUMNS, MemoryMismatchError, as_rows, check_query_encoder

FORMAT = "ravis-sharded-memory/1"
FILE_KINDS = ("keys", "values", "meta")
#: Metadata rows per parquet row group: a reader of a few rows decodes only their groups.
META_ROW_GROUP = 1024
STAMPS_NAME = ".verified.json"  # files of this memory already hashed OK (see VerifiedStamps)
_SUFFIX = {"keys": ".keys.npy", "values": ".values.npy", "meta": ".meta.parquet"}


def shard_file(name: str, kind: str) -> str:
    """The path of a shard file relative to MEMDIR."""
    return f"shards/{name}{_SUFFIX[kind]}"


def file_record(memdir: Path, rel: str) -> dict:
    path = Path(memdir) / rel
    return {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_shard(memdir: Path, name: str, keys: np.ndarray, values: np.ndarray, meta) -> dict:
    """Writes one shard's three files atomically; returns their manifest records.

    Args:
        keys: (n, dim) in the memory's dtype. values: (n, value_dim), same dtype.
        meta: a pyarrow Table of n rows (see :func:`meta_table`).
    """
    import pyarrow.parquet as pq

    if not (len(keys) == len(values) == meta.num_rows):
        raise InputError(f"shard {name}: {len(keys)} keys, {len(values)} values, "
                         f"{meta.num_rows} metadata rows")
    memdir = Path(memdir)
    save_npy(memdir / shard_file(name, "keys"), keys)
    save_npy(memdir / shard_file(name, "values"), values)
    with atomic_path(memdir / shard_file(name, "meta")) as tmp:
        pq.write_table(meta, tmp, row_group_size=META_ROW_GROUP)
    return {kind: file_record(memdir, shard_file(name, kind)) for kind in FILE_KINDS}


def meta_table(ids, texts, sources, labels, thumbnails, jsons, contents=None):
    """The metadata table of a shard, with a fixed schema (so empty shards match others).

    ``contents``: per row, the 16-byte blake2b of the image file's bytes, which finds the
    same image reached through two sources (None where unknown)."""
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                        ("label", pa.int64()), ("thumbnail", pa.binary()), ("json", pa.string()),
                        ("content", pa.binary())])
    ids = list(ids)
    return pa.table({"id": ids, "text": list(texts), "source": list(sources),
                     "label": list(labels), "thumbnail": list(thumbnails),
                     "json": list(jsons),
                     "content": list(contents) if contents is not None else [None] * len(ids)},
                    schema=schema)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header, without reading the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


def save_manifest(memdir: Path, manifest: dict) -> None:
    """Sorts shards by name, recomputes the total count, writes atomically."""
    manifest["shards"] = sorted(manifest["shards"], key=lambda s: s["name"])
    manifest["failed_shards"] = sorted(manifest["failed_shards"], key=lambda s: s["name"])
    manifest["count"] = sum(s["rows"] for s in manifest["shards"])
    save_json(Path(memdir) / "manifest.json", manifest)


def load_manifest(memdir: Path) -> dict:
    path = Path(memdir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{memdir}: not a sharded ravis memory (no manifest.json)")
    manifest = load_json(path)
    if manifest.get("format") != FORMAT:
        raise MemoryMismatchError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def check_shard_files(memdir: Path, manifest: dict, shard: dict, checksums: bool,
                      stamps: VerifiedStamps | None = None) -> list[str]:
    """Problems with one shard's files, each naming the file ([] if none).

    Always checks presence, sizes and the .npy headers (shape and dtype against the
    manifest); with ``checksums`` also sha256 (skipped for files ``stamps`` has seen
    unchanged since they last hashed right) and the metadata row count.
    """
    import pyarrow.parquet as pq

    problems = []
    memdir = Path(memdir)
    rows = shard["rows"]
    want = {"keys": (rows, manifest["dim"]), "values": (rows, manifest["value_dim"])}
    for kind in FILE_KINDS:
        entry = shard["files"][kind]
        path = memdir / entry["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            problems.append(f"{path}: {size} bytes, manifest says {entry['bytes']}")
            continue
        if checksums:
            ok = (stamps.matches(path, entry["sha256"]) if stamps is not None
                  else sha256_file(path) == entry["sha256"])
            if not ok:
                problems.append(f"{path}: checksum mismatch, the file is corrupt or was changed")
                continue
        if kind == "meta":
            if checksums:
                n = pq.ParquetFile(path).metadata.num_rows
                if n != rows:
                    problems.append(f"{path}: {n} rows, manifest says {rows}")
            continue
        try:
            shape, dtype = npy_header(path)
        except (ValueError, OSError, SyntaxError) as e:
            problems.append(f"{path}: not a readable .npy file ({e})")
            continue
        if shape != want[kind] or dtype != np.dtype(manifest["dtype"]):
            problems.append(f"{path}: shape {shape} {dtype}, manifest says {want[kind]} "
                            f"{manifest['dtype']}")
    return problems


def manifest_digest(manifest: dict) -> str:
    """The identity of a memory: its manifest, which holds every file's sha256."""
    return stable_hash(json.dumps(manifest, sort_keys=True))


class ShardedMemory:
    """A sharded memory on disk, opened lazily: arrays are memory-mapped per shard, and
    metadata is read per parquet row group, only for the rows asked for."""

    def __init__(self, memdir: Path | str, manifest: dict):
        self.memdir = Path(memdir)
        self.manifest = manifest
        self.shard_rows = [int(s["rows"]) for s in manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        self._meta_files: OrderedDict = OrderedDict()  # shard -> ParquetFile, most recent last
        self._meta_lock = threading.Lock()  # the server reads metadata from several threads

    @classmethod
    def open(cls, memdir: Path | str, verify: bool = False) -> "ShardedMemory":
        """Opens MEMDIR, checking every shard file's presence, size and .npy header against
        the manifest (cheap); ``verify`` also checks every file's sha256 before any byte is
        used (once: later opens re-hash only files changed since, see VerifiedStamps).

        Raises:
            FileNotFoundError: no manifest.
            MemoryMismatchError: a shard whose size, dimension, dtype or rows disagree with
                the manifest (or, with ``verify``, whose checksum fails), naming its file.
        """
        manifest = load_manifest(Path(memdir))
        if manifest["dtype"] not in MEMORY_DTYPES:
            raise MemoryMismatchError(f"{memdir}/manifest.json: dtype {manifest['dtype']!r}")
        mem = cls(memdir, manifest)
        mem._check(checksums=verify, stamps=VerifiedStamps(mem.memdir / STAMPS_NAME) if verify else None)
        return mem

    def _check(self, checksums: bool, stamps: VerifiedStamps | None = None) -> None:
        # sha256 releases the GIL: shards hash on every core at once (a first open of a
        # many-TB memory is bound by the hash rate, about 1.8 GB/s per core)
        workers = min(len(self.manifest["shards"]), os.cpu_count() or 1, 16) if checksums else 1
        with ThreadPoolExecutor(max(workers, 1)) as pool:
            found = pool.map(lambda s: check_shard_files(self.memdir, self.manifest, s, checksums,
                                                         stamps), self.manifest["shards"])
            problems = [p for shard_problems in found for p in shard_problems]
        if sum(self.shard_rows) != self.manifest["count"]:
            problems.append(f"{self.memdir / 'manifest.json'}: count {self.manifest['count']} "
                            f"but its shards hold {sum(self.shard_rows)} rows")
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise MemoryMismatchError(problems[0] + more + (
                "\n  " + "\n  ".join(problems[1:]) if len(problems) > 1 else ""))
        if stamps is not None:
            stamps.save()

    def verify(self) -> None:
        """Re-hashes every file (no stamps trusted) and checks the arrays' shapes and dtypes
        and the metadata row counts. Raises MemoryMismatchError naming the first bad file."""
        stamps = VerifiedStamps(self.memdir / STAMPS_NAME)
        self._check(checksums=True, stamps=_Rehash(stamps))

    # -- sizes and identity -----------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    def __len__(self) -> int:
        return self.count

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def value_dim(self) -> int:
        return int(self.manifest["value_dim"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def shard_names(self) -> list[str]:
        return [s["name"] for s in self.manifest["shards"]]

    @property
    def key_encoder(self) -> str:
        return self.manifest["key_encoder"]

    @property
    def value_encoder(self) -> str:
        return self.manifest["value_encoder"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.get("class_names", []))

    @property
    def digest(self) -> str:
        return manifest_digest(self.manifest)

    @property
    def key_digest(self) -> str:
        return stable_hash([[s["files"]["keys"]["sha256"], s["files"]["meta"]["sha256"]]
                            for s in self.manifest["shards"]])

    def check_query_encoder(self, encoder_fingerprint: str, dim: int) -> None:
        check_query_encoder(self, encoder_fingerprint, dim, name=str(self.memdir))

    # -- per shard --------------------------------------------------------------------------
    def _path(self, i: int, kind: str) -> Path:
        return self.memdir / self.manifest["shards"][i]["files"][kind]["path"]

    def _map(self, i: int, kind: str) -> np.ndarray:
        if (i, kind) not in self._maps:
            self._maps[i, kind] = np.load(self._path(i, kind), mmap_mode="r", allow_pickle=False)
        return self._maps[i, kind]

    def keys(self, i: int, mmap: bool = True) -> np.ndarray:
        """(rows_i, dim) keys of shard i, in the stored dtype (memory-mapped by default)."""
        return self._map(i, "keys") if mmap else np.load(self._path(i, "keys"), allow_pickle=False)

    def values(self, i: int, mmap: bool = True) -> np.ndarray:
        """(rows_i, value_dim) values of shard i, in the stored dtype."""
        return self._map(i, "values") if mmap else np.load(self._path(i, "values"), allow_pickle=False)

    def meta(self, i: int, columns: list[str] | None = None):
        """Shard i's metadata as a pyarrow Table (id, text, source, label, thumbnail, json)."""
        import pyarrow.parquet as pq

        return pq.read_table(self._path(i, "meta"), columns=columns)

    def iter_keys(self, batch_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(global start row, (n, dim) float32 keys) over all shards in order; a batch
        never straddles two shards."""
        for i, rows in enumerate(self.shard_rows):
            keys = self.keys(i)
            for start in range(0, rows, batch_rows):
                yield int(self.offsets[i]) + start, np.asarray(
                    keys[start:start + batch_rows], dtype=np.float32)

    def locate(self, row: int) -> tuple[int, int]:
        """(shard index, row within it) of a global row id."""
        if not 0 <= row < self.count:
            raise IndexError(f"row {row} outside the memory's {self.count} rows")
        i = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return i, row - int(self.offsets[i])

    # -- the Memory protocol: rows -----------------------------------------------------------
    def _by_shard(self, rows):
        """(shard, positions in rows, sorted unique local rows, inverse) per shard touched."""
        for i, pos, local in by_part(as_rows(rows, self.count), self.offsets):
            local, inverse = np.unique(local, return_inverse=True)
            yield i, pos, local, inverse

    def _gather(self, rows, kind: str, width: int) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        parts = list(self._by_shard(rows))
        if len(parts) == 1:  # one shard holds them all: no copy into ``out`` (a training
            i, _, local, inverse = parts[0]  # batch reads 512 x 100 rows at a time)
            return self._map(i, kind)[local][inverse]
        out = np.empty((len(rows), width), dtype=self.dtype)
        for i, pos, local, inverse in parts:
            out[pos] = self._map(i, kind)[local][inverse]  # ascending reads touch each page once
        return out

    def keys_at(self, rows) -> np.ndarray:
        return self._gather(rows, "keys", self.dim)

    def values_at(self, rows) -> np.ndarray:
        return self._gather(rows, "values", self.value_dim)

    def _meta_rows(self, i: int, local: np.ndarray, columns: list[str]):
        """Columns of shard i's rows ``local`` (sorted), decoding only their row groups."""
        with self._meta_lock:
            return self._read_meta_rows(i, local, columns)

    def _read_meta_rows(self, i: int, local: np.ndarray, columns: list[str]):
        import pyarrow.parquet as pq

        f = self._meta_files.pop(i, None) or pq.ParquetFile(self._path(i, "meta"))
        self._meta_files[i] = f
        if len(self._meta_files) > 64:  # bounded: a 10^4-shard memory must not hold 10^4 files
            self._meta_files.popitem(last=False)
        sizes = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        groups = np.unique(np.searchsorted(starts, local, side="right") - 1)
        table = f.read_row_groups([int(g) for g in groups], columns=columns)
        # rows of the groups read, renumbered from the first group's start
        group_start = np.concatenate([[0], np.cumsum([sizes[g] for g in groups])])
        g_of = np.searchsorted(groups, np.searchsorted(starts, local, side="right") - 1)
        return table.take(group_start[g_of] + local - starts[groups[g_of]])

    def labels_at(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty(len(rows), dtype=np.int64)
        for i, pos, local, inverse in self._by_shard(rows):
            out[pos] = self._meta_rows(i, local, ["label"]).column("label").to_numpy()[inverse]
        return out

    def meta_at(self, rows, columns: Sequence[str]) -> dict[str, list]:
        unknown = set(columns) - set(META_COLUMNS)
        if unknown:
            raise KeyError(f"unknown memory metadata columns {sorted(unknown)}; known: {META_COLUMNS}")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out: dict[str, list] = {c: [None] * len(rows) for c in columns}
        for i, pos, local, inverse in self._by_shard(rows):
            table = self._meta_rows(i, local, list(columns))
            for c in columns:
                got = table.column(c).to_pylist()
                for p, j in zip(pos, inverse):
                    out[c][p] = got[j]
        return out

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Streams every shard's id column (no per-row object is kept between shards)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = pa.array(list(ids), pa.string())
        out = np.full(len(wanted), -1, dtype=np.int64)
        for i in range(len(self.shard_rows)):
            col = self.meta(i, ["id"]).column("id")
            at = pc.index_in(wanted, value_set=col).to_numpy(zero_copy_only=False)
            found = ~np.isnan(at.astype(np.float64)) if at.dtype.kind == "f" else at >= 0
            out[found] = self.offsets[i] + at[found].astype(np.int64)
        return out

    @property
    def parts(self) -> list[tuple[str, "ShardedMemory"]]:
        return [("", self)]

    def key_blocks(self) -> list[np.ndarray]:
        return [self.keys(i) for i in range(len(self.shard_rows))]



class _Rehash:
    """VerifiedStamps that trusts no stamp (a full verify) but records the results."""

    def __init__(self, stamps: VerifiedStamps):
        self.stamps = stamps

    def matches(self, path, sha256: str) -> bool:
        return self.stamps.matches(path, sha256, trust_stamps=False)

    def save(self) -> None:
        self.stamps.save()


def save_single_shard(memory, memdir: Path, dtype: str) -> ShardedMemory:
    """Writes any memory that fits in RAM as a one-shard folder (shard ``00000``)."""
    if dtype not in MEMORY_DTYPES:
        raise InputError(f"memory dtype must be one of {MEMORY_DTYPES}, got {dtype!r}")
    rows = np.arange(len(memory))
    meta = memory.meta_at(rows, ["id", "text", "source", "thumbnail"])
    table = meta_table(meta["id"], meta["text"], meta["source"], memory.labels_at(rows),
                       [t or b"" for t in meta["thumbnail"]], ["{}"] * len(rows))
    files = write_shard(memdir, "00000", memory.keys_at(rows).astype(dtype),
                        memory.values_at(rows).astype(dtype), table)
    manifest = {"format": FORMAT, "key_encoder": memory.key_encoder,
                "value_encoder": memory.value_encoder, "dim": memory.dim,
                "value_dim": memory.value_dim, "dtype": dtype, "count": len(memory),
                "class_names": list(memory.class_names), "skipped": {}, "sources": [],
                "shards": [{"name": "00000", "input": "in-RAM memory", "rows": len(memory),
                            "skipped": {}, "files": files}], "failed_shards": []}
    save_manifest(memdir, manifest)
    return ShardedMemory.open(memdir)
