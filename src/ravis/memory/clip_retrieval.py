"""Importing and exporting the embedding layout of clip-retrieval and the LAION releases.

::

    SRC/img_emb/img_emb_{i}.npy          (rows, dim) unit image embeddings -> keys
    SRC/text_emb/text_emb_{i}.npy        (rows, value_dim) caption embeddings -> values
    SRC/metadata/metadata_{i}.parquet    caption, url or image_path, ... -> meta.parquet

File triple i becomes memory shard i (sorted numerically). Import checks every file before
it records it: the three files agree on rows, the arrays on dtype (float16 or float32, one
for the whole memory) and on dims (the encoders' dims), and no row is NaN, infinite or all
zeros, and every key row has unit norm. Without ``copy`` the manifest's key and value
records point at the source files (absolute paths, with their sha256 and size, so
``ravis memory verify`` catches a later change to them); with ``copy`` they are copied into
MEMDIR/shards/. The metadata is always rewritten in ravis's schema: ``caption`` -> text,
``key`` or ``id`` -> id, ``source`` and ``label`` where present (as export writes them:
the label is a class name, and the memory's class names are every name seen, sorted),
every other column into the row's json. Arrays are read memory-mapped in blocks, so a
many-GB file never sits in RAM whole; every file is written under a temporary name and
renamed, and the manifest is saved after each shard, so a killed import reruns to the
same bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import atomic_path, load_npy
from ..progress import progress_bar
from . import MemoryMismatchError
from ..config import MEMORY_DTYPES, MemoryBuildConfig
from .shard_build import _exclusive, _remove_temporaries
from .sharded import (FILE_KINDS, FORMAT, META_ROW_GROUP, ShardedMemory,
                      check_shard_files, file_record, load_manifest, meta_table, npy_header,
                      save_manifest, shard_file)

# kind -> (sub-folder, file name pattern) of the clip-retrieval layout
LAYOUT = {"keys": ("img_emb", "img_emb_{}.npy"), "values": ("text_emb", "text_emb_{}.npy"),
          "meta": ("metadata", "metadata_{}.parquet")}
BLOCK_ROWS = 65536  # rows checked or converted at a time (a multiple of META_ROW_GROUP)
NORM_TOL = 1e-2  # how far from 1 a key row's norm may be (float16 rounding is ~1e-3)
EXPORT_COLUMNS = ("caption", "key", "source", "label")  # what export writes before json fields


class ClipRetrievalError(InputError):
    """A folder that is not a valid clip-retrieval embedding layout (names the file)."""


class DiskFullError(OSError):
    """The disk filled during an import; what was written before is intact, rerun resumes."""


# ---------------------------------------------------------------------------------------------
# Reading the source folder


def find_parts(src: Path) -> list[tuple[int, dict[str, Path]]]:
    """(i, {kind: path}) of every file triple in ``src``, sorted by i.

    Raises:
        ClipRetrievalError: an i with one or two of its three files missing, or none at all.
    """
    found = {kind: _numbered(src / folder, pattern) for kind, (folder, pattern) in LAYOUT.items()}
    numbers = sorted(set().union(*found.values()))
    if not numbers:
        raise ClipRetrievalError(f"{src}: no img_emb/img_emb_*.npy, text_emb/text_emb_*.npy or "
                                 "metadata/metadata_*.parquet files (clip-retrieval layout)")
    for i in numbers:
        have = [found[k][i] for k in LAYOUT if i in found[k]]
        for kind, (folder, pattern) in LAYOUT.items():
            if i not in found[kind]:
                raise ClipRetrievalError(f"{src / folder / pattern.format(i)}: missing (the "
                                         f"counterpart of {have[0]})")
    return [(i, {kind: found[kind][i] for kind in LAYOUT}) for i in numbers]


def _numbered(folder: Path, pattern: str) -> dict[int, Path]:
    """{i: path} of the files in ``folder`` named ``pattern`` with a number i for {}."""
    regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)") + "$")
    matches = ((regex.match(p.name), p) for p in folder.glob(pattern.format("*")))
    return {int(m.group(1)): p for m, p in matches if m}


def _npy_shape(path: Path) -> tuple[int, int, str]:
    """(rows, dim, dtype name) from a .npy header; refuses anything but 2-d float16/32."""
    try:
        shape, dtype = npy_header(path)
    except (ValueError, OSError, SyntaxError, EOFError) as e:
        raise ClipRetrievalError(f"{path}: not a readable .npy file ({e})") from e
    if dtype.name not in MEMORY_DTYPES or not dtype.isnative:  # object (pickled) arrays land here
        raise ClipRetrievalError(f"{path}: dtype {dtype}, expected float16 or float32")
    if len(shape) != 2:
        raise ClipRetrievalError(f"{path}: shape {shape}, expected (rows, dim)")
    return shape[0], shape[1], dtype.name


def _meta_rows(path: Path) -> int:
    """The metadata file's row count, from its footer; it must have a text caption column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise ClipRetrievalError(f"{path}: not a readable parquet file ({e})") from e
    if "caption" not in f.schema_arrow.names:
        raise ClipRetrievalError(f"{path}: no caption column (columns: {f.schema_arrow.names})")
    kind = f.schema_arrow.field("caption").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise ClipRetrievalError(f"{path}: the caption column holds {kind}, not text")
    return f.metadata.num_rows


def check_headers(parts, key_dim: int, value_dim: int) -> str:
    """Checks row counts, dims and dtypes of every part from headers alone (cheap, before
    anything is written); returns the memory's dtype."""
    first = None
    for _, paths in parts:
        (kr, kd, kt), (vr, vd, vt) = _npy_shape(paths["keys"]), _npy_shape(paths["values"])
        mr = _meta_rows(paths["meta"])
        if not kr == vr == mr:
            raise ClipRetrievalError(f"{paths['keys']}: {kr} rows, but {paths['values']} has "
                                     f"{vr} and {paths['meta']} {mr}; they must agree")
        for path, d, want, what in ((paths["keys"], kd, key_dim, "key"),
                                    (paths["values"], vd, value_dim, "value")):
            if d != want:
                raise ClipRetrievalError(f"{path}: {d}-d embeddings, but the {what} encoder "
                                         f"makes {want}-d ones")
        if kt != vt:
            raise ClipRetrievalError(f"{paths['keys']} is {kt} but {paths['values']} is {vt}; "
                                     "a memory has one dtype")
        first = first or (paths["keys"], kt)
        if kt != first[1]:
            raise ClipRetrievalError(f"{paths['keys']} is {kt} but {first[0]} is {first[1]}; "
                                     "a memory has one dtype")
    return first[1]


def check_rows(path: Path, unit: bool) -> None:
    """Refuses NaN, infinite and all-zero rows (and with ``unit`` rows whose norm is not 1),
    naming the first bad row; reads BLOCK_ROWS rows at a time from a memory map."""
    try:
        x = load_npy(path, mmap=True)  # allow_pickle=False inside
    except ValueError as e:
        raise ClipRetrievalError(str(e)) from e
    for r0 in range(0, len(x), BLOCK_ROWS):
        block = np.asarray(x[r0:r0 + BLOCK_ROWS], dtype=np.float32)  # (b, d)
        norms = np.linalg.norm(block, axis=1)  # (b,)
        checks = [(~np.isfinite(block).all(axis=1), "NaN or infinite values"),
                  (~block.any(axis=1), "all zeros")]
        if unit:
            checks.append((np.abs(norms - 1) > NORM_TOL, "norm {:.4f}; keys must be unit "
                           f"vectors (within {NORM_TOL}): normalise them before importing"))
        for bad, why in checks:
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise ClipRetrievalError(f"{path}: row {r0 + r}: " + why.format(norms[r]))


# ---------------------------------------------------------------------------------------------
# Writing one shard


def class_names_of(parts) -> list[str]:
    """Every class name in the metadata's string ``label`` column, sorted (export writes a
    memory's labels as names: the clip-retrieval layout has no class list of its own)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names: set[str] = set()
    for _, paths in parts:
        f = pq.ParquetFile(paths["meta"])
        if "label" in f.schema_arrow.names and pa.types.is_string(f.schema_arrow.field("label").type):
            names.update(v for v in f.read(columns=["label"]).column("label").to_pylist() if v is not None)
    return sorted(names)


def _meta_batches(path: Path, name: str, source_name: str | None, default_source: str,
                  class_names: list[str]):
    """The source metadata as ravis meta tables of BLOCK_ROWS rows each (caption -> text,
    key or id -> id, the other columns -> json)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    schema = f.schema_arrow
    id_col = next((c for c in ("key", "id") if c in schema.names), None)
    # Integer labels and a source column are ravis's own (export writes them, so a round
    # trip keeps them); an explicit source_name wins over the column.
    label_col = ("label" if "label" in schema.names
                 and pa.types.is_string(schema.field("label").type) else None)
    source_col = "source" if "source" in schema.names and source_name is None else None
    rest = [c for c in schema.names if c not in ("caption", id_col, label_col, source_col)]
    lookup = {c: i for i, c in enumerate(class_names)}
    start = 0
    for batch in f.iter_batches(batch_size=BLOCK_ROWS):
        n = batch.num_rows
        try:
            cols = batch.to_pydict()
        except UnicodeDecodeError as e:  # parquet does not check that its strings are UTF-8
            raise ClipRetrievalError(f"{path}: rows {start} to {start + n - 1} hold text that is "
                                     f"not UTF-8 ({e})") from None
        ids = cols[id_col] if id_col else [None] * n
        yield meta_table(
            ids=[f"{name}/{start + r}" if v is None else str(v) for r, v in enumerate(ids)],
            texts=[t or "" for t in cols["caption"]],
            sources=([default_source if v is None else v for v in cols[source_col]]
                     if source_col else [source_name or default_source] * n),
            labels=[-1 if y is None else lookup[y] for y in cols[label_col]] if label_col else [-1] * n,
            thumbnails=[b""] * n,
            jsons=[_row_json({c: cols[c][k] for c in rest}) for k in range(n)])
        start += n


def _row_json(fields: dict) -> str | None:
    """A row's other columns as JSON; a column with no value in this row is left out."""
    fields = {k: v for k, v in fields.items() if v is not None}
    return json.dumps(fields, ensure_ascii=False, default=str) if fields else None


def _write_meta(tables, path: Path, schema) -> None:
    """Writes meta tables to ``path`` atomically, in row groups of META_ROW_GROUP as
    write_shard does (readers of a few rows decode only their groups)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        with pq.ParquetWriter(f, schema) as writer:
            for table in tables:
                writer.write_table(table, row_group_size=META_ROW_GROUP)


def _copy_file(src: Path, dst: Path, sha256: str | None = None) -> str:
    """Copies ``src`` to ``dst`` atomically, hashing on the way; returns the sha256.

    Raises:
        MemoryMismatchError: the content does not hash to ``sha256`` (``dst`` is untouched).
    """
    h = hashlib.sha256()
    with atomic_path(dst) as tmp, open(src, "rb") as fi, open(tmp, "wb") as fo:
        for block in iter(lambda: fi.read(1 << 20), b""):
            h.update(block)
            fo.write(block)
        if sha256 is not None and h.hexdigest() != sha256:
            raise MemoryMismatchError(f"{src}: checksum mismatch, the file is corrupt or was "
                                      "changed")
    return h.hexdigest()


def import_shard(memdir: Path, name: str, paths: dict[str, Path], copy: bool,
                 source_name: str | None, default_source: str, class_names: list[str]) -> dict:
    """Checks one file triple and records it as shard ``name``; returns its manifest entry."""
    check_rows(paths["keys"], unit=True)
    check_rows(paths["values"], unit=False)
    files = {}
    for kind in ("keys", "values"):
        if copy:
            rel = shard_file(name, kind)
            sha = _copy_file(paths[kind], memdir / rel)
            files[kind] = {"path": rel, "sha256": sha, "bytes": (memdir / rel).stat().st_size}
        else:  # absolute, so memdir / path is the source file itself
            files[kind] = file_record(memdir, str(paths[kind]))
    rel = shard_file(name, "meta")
    _write_meta(_meta_batches(paths["meta"], name, source_name, default_source, class_names), memdir / rel,
                meta_table([], [], [], [], [], []).schema)
    files["meta"] = file_record(memdir, rel)
    return {"name": name, "input": str(paths["keys"]), "rows": _npy_shape(paths["keys"])[0],
            "skipped": {}, "files": {kind: files[kind] for kind in FILE_KINDS}}


# ---------------------------------------------------------------------------------------------
# Import


def encoder_info(spec: str, kind: str) -> tuple[str, int]:
    """(fingerprint, dim) of an encoder spec. Creates the encoder (loads its weights) but
    runs it on nothing: the embeddings were made elsewhere, ravis records who made them."""
    from ..encoders import create_image_encoder, create_text_encoder

    encoder = (create_image_encoder if kind == "image" else create_text_encoder)(spec)
    return encoder.fingerprint(), int(encoder.dim)


def _new_manifest(src: Path, specs: tuple[str, str], dtype: str, copy: bool,
                  source_name: str | None) -> dict:
    (key_fp, dim), (value_fp, value_dim) = (encoder_info(specs[0], "image"),
                                            encoder_info(specs[1], "text"))
    return {"format": FORMAT, "key_encoder": key_fp, "value_encoder": value_fp, "dim": dim,
            "value_dim": value_dim, "dtype": dtype, "count": 0, "class_names": [], "skipped": {},
            # what `ravis memory add` builds new shards with: the same encoders, and no
            # thumbnails (imported rows have none)
            "build": {"key_encoder_spec": specs[0], "value_encoder_spec": specs[1],
                      "batch_size": MemoryBuildConfig.batch_size, "thumbnails": False},
            "sources": [f"clip-retrieval:{src}"],
            "import": {"format": "clip-retrieval", "src": str(src), "copy": copy,
                       "source_name": source_name},
            "shards": [], "failed_shards": []}


def _resume(memdir: Path, new: dict, names: list[str]) -> dict:
    """The manifest to continue: ``new`` with the old one's shards that are still wanted and
    whose files hash right (none when MEMDIR holds no memory yet)."""
    if not (memdir / "manifest.json").exists():
        return new
    old = load_manifest(memdir)
    for field in ("key_encoder", "value_encoder", "dim", "value_dim", "dtype", "build",
                  "import", "class_names"):
        if old.get(field) != new[field]:
            raise MemoryMismatchError(
                f"{memdir / 'manifest.json'}: the memory has {field} {old.get(field)!r}, this "
                f"import would make {new[field]!r}; use another folder or the same settings")
    new["shards"] = [s for s in old["shards"] if s["name"] in names
                     and not check_shard_files(memdir, new, s, checksums=True)]
    return new


def _shard_names(parts) -> list[str]:
    """Zero-padded i, wide enough that name order is numeric order."""
    width = max(5, len(str(parts[-1][0])))
    return [f"{i:0{width}d}" for i, _ in parts]


def import_clip_retrieval(src: Path | str, out: Path | str, key_encoder: str,
                          value_encoder: str, *, copy: bool = False,
                          source_name: str | None = None, progress: bool = True) -> ShardedMemory:
    """Imports (or resumes importing) the clip-retrieval folder ``src`` as the memory ``out``.

    Args:
        key_encoder, value_encoder: specs of the encoders that made img_emb and text_emb;
            their fingerprints are recorded and their dims must be the files'.
        copy: copy the .npy files into ``out`` (default: the manifest points at them).
        source_name: every row's source (default: the metadata's source column where it
            has one, else src's folder name).

    Raises:
        ClipRetrievalError: a file that breaks the layout's rules, naming it (and the row).
        MemoryMismatchError: ``out`` holds another memory or an import with other settings.
        DiskFullError: the disk filled; the shards written before stay, rerun resumes.
    """
    src, out = Path(src).resolve(), Path(out).resolve()
    parts = find_parts(src)
    dims = encoder_info(key_encoder, "image")[1], encoder_info(value_encoder, "text")[1]
    dtype = check_headers(parts, *dims)
    manifest = _new_manifest(src, (key_encoder, value_encoder), dtype, copy, source_name)
    manifest["class_names"] = class_names_of(parts)
    names = _shard_names(parts)
    with _exclusive(out):
        manifest = _resume(out, manifest, names)
        (out / "shards").mkdir(parents=True, exist_ok=True)
        todo = [(n, paths) for n, (_, paths) in zip(names, parts)
                if n not in {s["name"] for s in manifest["shards"]}]
        try:
            _import_parts(out, manifest, todo, len(parts), copy, source_name, src.name, progress)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise DiskFullError(errno.ENOSPC, f"{out}: disk full while importing {src} "
                                f"({len(manifest['shards'])} of {len(parts)} shards done and "
                                "intact); free some space and rerun to resume") from e
        finally:
            _remove_temporaries(out / "shards")
    return ShardedMemory.open(out)


def _import_parts(memdir: Path, manifest: dict, todo, total: int, copy: bool,
                  source_name: str | None, default_source: str, progress: bool) -> None:
    """Imports the shards ``todo`` (name, paths), saving the manifest after each: a kill
    loses at most the shard in progress, whose files are only temporaries."""
    save_manifest(memdir, manifest)
    with progress_bar(total, "memory shards", "shard", initial=total - len(todo),
                      enabled=progress and bool(todo)) as bar:
        for name, paths in todo:
            entry = import_shard(memdir, name, paths, copy, source_name, default_source,
                                 manifest["class_names"])
            manifest["shards"].append(entry)
            save_manifest(memdir, manifest)
            bar.update(1)


# ---------------------------------------------------------------------------------------------
# Export


def export_clip_retrieval(memdir: Path | str, out: Path | str, progress: bool = True) -> int:
    """Writes the memory ``memdir`` as a clip-retrieval folder ``out``; returns the number of
    file triples (one per shard, numbered 0.. in shard order).

    img_emb and text_emb are the key and value files byte for byte (stored dtype), checked
    against the manifest's sha256 on the way; metadata has caption, key (the ravis id),
    source, label and the json fields as columns.

    Raises:
        MemoryMismatchError: a shard file that does not match the manifest.
        ClipRetrievalError: ``out`` holds files of a bigger export (they would be imported too).
    """
    memory = ShardedMemory.open(memdir)
    out = Path(out)
    shards = memory.manifest["shards"]
    _check_no_leftovers(out, len(shards))
    with progress_bar(len(shards), "memory shards", "shard",
                      enabled=progress and bool(shards)) as bar:
        for i, shard in enumerate(shards):
            for kind in ("keys", "values"):
                folder, pattern = LAYOUT[kind]
                record = shard["files"][kind]
                _copy_file(memory.memdir / record["path"], out / folder / pattern.format(i),
                           record["sha256"])
            folder, pattern = LAYOUT["meta"]
            with atomic_path(out / folder / pattern.format(i)) as tmp:
                _export_meta(memory.meta(i, ["id", "text", "source", "label", "json"]), tmp,
                             memory.class_names)
            bar.update(1)
    return len(shards)


def _check_no_leftovers(out: Path, n: int) -> None:
    for folder, pattern in LAYOUT.values():
        for i, path in sorted(_numbered(out / folder, pattern).items()):
            if i >= n:
                raise ClipRetrievalError(f"{path}: left from another export (this memory has "
                                         f"{n} shards); export into an empty folder")


def _export_meta(meta, path: Path, names: list[str]) -> None:
    """caption, key, source, label, then every json field seen in the shard as a column (a
    field named like one of those four is written as json_<name>)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    m = meta.to_pydict()
    fields = [json.loads(t) if t else {} for t in m["json"]]
    fields = [f if isinstance(f, dict) else {"json": f} for f in fields]
    columns = {"caption": pa.array(m["text"], pa.string()), "key": pa.array(m["id"], pa.string()),
               "source": pa.array(m["source"], pa.string()),
               # class names, not indexes: the layout has no class list to index into
               "label": pa.array([names[y] if 0 <= y < len(names) else None for y in m["label"]],
                                 pa.string())}
    for name in dict.fromkeys(k for f in fields for k in f):  # first-seen order
        values = [f.get(name) for f in fields]
        column = f"json_{name}" if name in EXPORT_COLUMNS else name
        try:
            columns[column] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types across rows: keep as JSON
            columns[column] = pa.array([None if v is None else json.dumps(v) for v in values],
                                       pa.string())
    pq.write_table(pa.table(columns), path)
