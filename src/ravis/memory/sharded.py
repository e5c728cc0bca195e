"""The sharded on-disk memory: one key, value and metadata file per shard, and a manifest.

::

    MEMDIR/manifest.json               format, encoders, dims, dtype, count, class_names,
                                       shards [{name, input, rows, skipped, files}], failed_shards
    MEMDIR/shards/NNNNN.keys.npy       (rows, dim) unit-normalised image embeddings
    MEMDIR/shards/NNNNN.values.npy     (rows, value_dim) caption embeddings
    MEMDIR/shards/NNNNN.meta.parquet   id, text, source, label, thumbnail (64 px JPEG), json

Keys and values are float16 or float32 ``.npy`` files, memory-mappable. Global row ids are
the shards concatenated in manifest (name) order: row r of shard i is ``offset_i + r``.
Each file entry carries its size and sha256, so :meth:`ShardedMemory.verify` and a resumed
build can tell a finished shard from a damaged or half-written one. Every file, the
manifest included, is written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np

from ..io import atomic_path, load_json, save_json, save_npy
from .store import Memory, MemoryMismatchError

FORMAT = "ravis-sharded-memory/1"
DTYPES = ("float16", "float32")
FILE_KINDS = ("keys", "values", "meta")
_SUFFIX = {"keys": ".keys.npy", "values": ".values.npy", "meta": ".meta.parquet"}


def shard_file(name: str, kind: str) -> str:
    """The path of a shard file relative to MEMDIR."""
    return f"shards/{name}{_SUFFIX[kind]}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        raise ValueError(f"shard {name}: {len(keys)} keys, {len(values)} values, "
                         f"{meta.num_rows} metadata rows")
    memdir = Path(memdir)
    save_npy(memdir / shard_file(name, "keys"), keys)
    save_npy(memdir / shard_file(name, "values"), values)
    with atomic_path(memdir / shard_file(name, "meta")) as tmp:
        pq.write_table(meta, tmp)
    return {kind: file_record(memdir, shard_file(name, kind)) for kind in FILE_KINDS}


def meta_table(ids, texts, sources, labels, thumbnails, jsons):
    """The metadata table of a shard, with a fixed schema (so empty shards match others)."""
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                        ("label", pa.int64()), ("thumbnail", pa.binary()), ("json", pa.string())])
    return pa.table({"id": list(ids), "text": list(texts), "source": list(sources),
                     "label": list(labels), "thumbnail": list(thumbnails),
                     "json": list(jsons)}, schema=schema)


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


def check_shard_files(memdir: Path, manifest: dict, shard: dict, checksums: bool) -> list[str]:
    """Problems with one shard's files, each naming the file ([] if none).

    Always checks presence and the .npy headers (shape and dtype against the manifest);
    with ``checksums`` also sizes, sha256 and the metadata row count.
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
        if checksums:
            size = path.stat().st_size
            if size != entry["bytes"]:
                problems.append(f"{path}: {size} bytes, manifest says {entry['bytes']}")
                continue
            if sha256_file(path) != entry["sha256"]:
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


class ShardedMemory:
    """A sharded memory on disk, opened lazily: arrays are memory-mapped per shard."""

    def __init__(self, memdir: Path | str, manifest: dict):
        self.memdir = Path(memdir)
        self.manifest = manifest
        self.shard_rows = [int(s["rows"]) for s in manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)

    @classmethod
    def open(cls, memdir: Path | str, verify: bool = False) -> "ShardedMemory":
        """Opens MEMDIR, checking every shard's .npy headers against the manifest (cheap);
        ``verify`` also checks sizes, checksums and metadata rows (reads every byte).

        Raises:
            FileNotFoundError: no manifest.
            MemoryMismatchError: a shard whose dimension, dtype or rows disagree with the
                manifest (or, with ``verify``, whose checksum fails), naming its file.
        """
        manifest = load_manifest(Path(memdir))
        if manifest["dtype"] not in DTYPES:
            raise MemoryMismatchError(f"{memdir}/manifest.json: dtype {manifest['dtype']!r}")
        mem = cls(memdir, manifest)
        mem._check(checksums=verify)
        return mem

    def _check(self, checksums: bool) -> None:
        problems = [p for s in self.manifest["shards"]
                    for p in check_shard_files(self.memdir, self.manifest, s, checksums)]
        if sum(self.shard_rows) != self.manifest["count"]:
            problems.append(f"{self.memdir / 'manifest.json'}: count {self.manifest['count']} "
                            f"but its shards hold {sum(self.shard_rows)} rows")
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise MemoryMismatchError(problems[0] + more + (
                "\n  " + "\n  ".join(problems[1:]) if len(problems) > 1 else ""))

    def verify(self) -> None:
        """Re-checks every file's size and sha256, the arrays' shapes and dtypes and the
        metadata row counts. Raises MemoryMismatchError naming the first bad file."""
        self._check(checksums=True)

    # -- sizes ------------------------------------------------------------------------------
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

    # -- data -------------------------------------------------------------------------------
    def _path(self, i: int, kind: str) -> Path:
        return self.memdir / self.manifest["shards"][i]["files"][kind]["path"]

    def keys(self, i: int, mmap: bool = True) -> np.ndarray:
        """(rows_i, dim) keys of shard i, in the stored dtype (memory-mapped by default)."""
        return np.load(self._path(i, "keys"), mmap_mode="r" if mmap else None, allow_pickle=False)

    def values(self, i: int, mmap: bool = True) -> np.ndarray:
        """(rows_i, value_dim) values of shard i, in the stored dtype."""
        return np.load(self._path(i, "values"), mmap_mode="r" if mmap else None,
                       allow_pickle=False)

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

    def to_memory(self, verify: bool = True) -> Memory:
        """All shards as the core's in-RAM :class:`~ravis.memory.store.Memory` (float32).

        ``verify`` (default) checks every file's checksum first: loading reads every byte
        anyway, and a damaged shard must not reach an experiment.
        """
        if verify:
            self.verify()
        metas = [self.meta(i, ["id", "text", "source", "label"]).to_pydict()
                 for i in range(len(self.shard_rows))]
        n = len(self.shard_rows)
        cat = (lambda parts, d: np.concatenate(parts).astype(np.float32) if parts
               else np.zeros((0, d), np.float32))
        return Memory(keys=cat([self.keys(i, mmap=False) for i in range(n)], self.dim),
                      values=cat([self.values(i, mmap=False) for i in range(n)], self.value_dim),
                      labels=np.array([y for m in metas for y in m["label"]], np.int64),
                      texts=[t for m in metas for t in m["text"]],
                      ids=[x for m in metas for x in m["id"]],
                      sources=[s for m in metas for s in m["source"]],
                      key_encoder=self.key_encoder, value_encoder=self.value_encoder,
                      class_names=self.class_names)
