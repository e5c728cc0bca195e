"""Image-text collections as a list of input shards, each read as rows (key, image, caption).

A source spec names a collection:

* ``wds:PATTERN`` or a bare path ending in ``.tar`` (or a brace pattern of them): webdataset
  tar shards as img2dataset writes them, ``KEY.jpg|jpeg|png|webp`` + ``KEY.txt`` (caption)
  + ``KEY.json`` (metadata) per sample; one input shard per tar.
* ``parquet:PATTERN[:IMAGE_COL[:CAPTION_COL]]`` or a bare ``.parquet`` path: tables whose
  image column holds encoded bytes, a path (relative to the table's folder), or a
  ``{"bytes", "path"}`` struct; one input shard per file.
* ``imagefolder:PATH`` and ``tuxpaint[:ROOT]``: the core's folder layouts (label = folder,
  caption = sidecar ``.txt``), cut into input shards of ``rows_per_shard`` items.
* ``emoji[:ROOT]``: the emoji packages of :mod:`ravis.data.emoji`, one row per emoji and
  artist (caption = its name, no label, the category in the row's JSON), collection
  ``emoji-<artist>``; input shards of ``rows_per_shard`` items of one artist.

Patterns take braces (``shards/{00000..00099}.tar``, via braceexpand) and globs; the files of
one spec are sorted, specs keep their order, so shard order is deterministic.

Rows that cannot be used are counted per reason (:data:`SKIP_REASONS`) rather than
raised, unless ``strict``. A shard that cannot be read at all raises :class:`ShardReadError`
naming it; the builder records it and goes on with the others.
"""

from __future__ import annotations

import collections
import glob
import itertools
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..config import MemoryBuildConfig, MemoryConfig
from ..errors import InputError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SKIP_REASONS = ("missing_caption", "missing_image", "bad_image", "duplicate_key")
IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "image_path", "path", "filepath")
CAPTION_COLUMNS = ("caption", "text", "txt")


class SourceError(InputError):
    """A bad source spec, or (with ``strict``) a row that would have been skipped."""


class ShardReadError(OSError):
    """An input shard that cannot be read at all; the message names it."""


@dataclass
class Row:
    """One image-text pair of an input shard."""

    key: str  # unique within its input shard (the tar key, parquet key, or relative path)
    image: bytes | str  # encoded image bytes, or the path of an image file
    text: str  # the caption (for folder sources without one: the label prompt)
    label: int = -1  # index into the build's class_names, -1 if unknown
    json: str | None = None  # the sample's metadata (img2dataset's KEY.json), as text


@dataclass(frozen=True)
class InputShard:
    """One unit of work: a tar or parquet file, or a slice of a folder's listing.

    Plain data only, so that it pickles to Ray workers.
    """

    kind: str  # "wds", "parquet" or "files"
    input: str  # what the manifest records: the file path, or "SPEC[start:stop]"
    collection: str  # names the collection in the meta "source" column
    path: str = ""  # the tar or parquet file
    image_col: str | None = None
    caption_col: str | None = None
    items: tuple = ()  # "files" kind: (key, image path, caption, label[, json]) per row


@dataclass
class ShardRows:
    """The usable rows of an input shard and what was skipped."""

    rows: list[Row]
    skipped: collections.Counter = field(default_factory=collections.Counter)


# ---------------------------------------------------------------------------------------------
# Specs -> input shards


def resolve_sources(specs: str | list[str], rows_per_shard: int = MemoryBuildConfig.rows_per_shard,
                    class_names: list[str] | None = None) -> tuple[list[InputShard], list[str]]:
    """The input shards of ``specs`` in order, and the class names their labels index.

    Args:
        rows_per_shard: input shard size for folder sources (tars and tables are one each).
        class_names: names already in use (by the memory being appended to); new folder
            classes are appended, so existing label indices keep their meaning.

    Raises:
        SourceError: an unknown spec, or a pattern that matches no file.
    """
    if isinstance(specs, str):
        specs = [specs]
    if rows_per_shard < 1:
        raise SourceError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    class_names = list(class_names or [])
    shards: list[InputShard] = []
    for spec in specs:
        kind, arg = _kind(spec)
        if kind == "wds":
            shards += [InputShard("wds", p, _collection(p), path=p) for p in expand(arg, spec)]
        elif kind == "parquet":
            pattern, _, cols = arg.partition(":")
            image_col, _, caption_col = cols.partition(":")
            shards += [InputShard("parquet", p, _collection(p), path=p,
                                  image_col=image_col or None, caption_col=caption_col or None)
                       for p in expand(pattern, spec)]
        elif kind == "emoji":
            shards += _emoji_shards(arg, spec, rows_per_shard)
        else:
            shards += _folder_shards(kind, arg, spec, rows_per_shard, class_names)
    return shards, class_names


def _kind(spec: str) -> tuple[str, str]:
    kind, sep, arg = spec.partition(":")
    if sep and kind in ("wds", "parquet", "imagefolder") and arg:
        return kind, arg
    if kind in ("tuxpaint", "emoji"):
        return kind, arg
    if spec.endswith((".tar", ".tar.gz", ".tgz")) or (spec.endswith("}") and ".tar" in spec):
        return "wds", spec
    if spec.endswith(".parquet"):
        return "parquet", spec
    raise SourceError(f"unknown source spec {spec!r}; expected wds:PATTERN, "
                      "parquet:PATTERN[:IMAGE_COL[:CAPTION_COL]], imagefolder:PATH, "
                      "tuxpaint[:ROOT], emoji[:ROOT], or a path ending in .tar / .parquet")


def expand(pattern: str, spec: str | None = None) -> list[str]:
    """The files a brace and glob pattern names, sorted. A brace-expanded name that does
    not exist is kept (its shard fails by name); a glob that matches nothing is dropped.

    Raises:
        SourceError: nothing at all matches.
    """
    from braceexpand import braceexpand

    try:
        names = list(braceexpand(pattern))
    except ValueError as e:  # UnbalancedBracesError
        raise SourceError(f"source {spec or pattern!r}: {e}") from e
    found = set()
    for name in names:
        if glob.has_magic(name):
            found.update(glob.glob(name))
        else:
            found.add(name)
    if not found or not any(os.path.exists(p) for p in found):
        raise SourceError(f"source {spec or pattern!r}: no file matches {pattern!r}")
    return sorted(found)


def _collection(path: str) -> str:
    """The folder holding the shards names the collection (e.g. "laion-subset")."""
    parent = Path(path).resolve().parent
    return parent.name or str(parent)


def _folder_shards(kind: str, arg: str, spec: str, rows_per_shard: int,
                   class_names: list[str]) -> list[InputShard]:
    from ..data.imagefolder import IMAGE_EXTENSIONS, class_of, find_files, read_caption, shown_name
    from ..data.tuxpaint import DEFAULT_ROOT

    root = Path(arg or DEFAULT_ROOT)
    if not root.is_dir():
        raise SourceError(f"source {spec!r}: {root} is not a folder")
    if kind == "tuxpaint":  # stamps with a caption sidecar, classes two folders deep
        rels = [r for r in find_files(root, (".png",)) if (root / r).with_suffix(".txt").is_file()]
        depth, first_non_empty, collection = 2, False, "tuxpaint"
    else:
        rels = find_files(root, IMAGE_EXTENSIONS)
        depth, first_non_empty, collection = 1, True, root.name or str(root)
    rels = [r for r in rels if len(PurePosixPath(r).parts) > 1]  # loose files have no class
    if not rels:
        raise SourceError(f"source {spec!r}: no images in class folders below {root}")
    classes = [shown_name(class_of(r, depth)) for r in rels]
    for c in sorted(set(classes)):
        if c not in class_names:
            class_names.append(c)
    index = {c: i for i, c in enumerate(class_names)}
    items = []
    for rel, c in zip(rels, classes):
        caption = read_caption(root / rel, first_non_empty=first_non_empty)
        text = caption or MemoryConfig.prompt.format(label=c.rsplit("/", 1)[-1])
        items.append((shown_name(rel), str(root / rel), text, index[c]))
    name = spec if ":" in spec or kind == "imagefolder" else f"{kind}:{root}"
    return [InputShard("files", f"{name}[{start}:{start + len(chunk)}]", collection,
                       items=tuple(chunk))
            for start in range(0, len(items), rows_per_shard)
            for chunk in [items[start:start + rows_per_shard]]]


def _emoji_shards(arg: str, spec: str, rows_per_shard: int) -> list[InputShard]:
    """The artists' rows in turn, each artist's cut into shards of its own collection. The
    package version is part of each shard's input, so that a resumed build redoes the
    shards of a package that was updated since."""
    from ..data.emoji import default_root, load_emoji

    root = Path(arg) if arg else default_root()
    name = spec if arg else f"emoji:{root}"
    images = load_emoji(root)
    if not images:
        raise SourceError(f"source {spec!r}: no emoji PNG below {root} is listed in its emoji.json")
    shards = []
    for artist, group in itertools.groupby(images, key=lambda e: e.artist):
        group = list(group)
        items = [(e.key, e.path, e.caption, -1, e.meta) for e in group]
        shards += [InputShard("files", f"{name}:{group[0].package}[{start}:{start + len(chunk)}]",
                              f"emoji-{artist}", items=tuple(chunk))
                   for start in range(0, len(items), rows_per_shard)
                   for chunk in [items[start:start + rows_per_shard]]]
    return shards


# ---------------------------------------------------------------------------------------------
# Input shard -> rows


def read_rows(shard: InputShard, strict: bool = False) -> ShardRows:
    """The usable rows of an input shard, in input order (the first of duplicate keys wins).

    Raises:
        ShardReadError: the shard cannot be read at all (missing, not a tar, truncated).
        SourceError: with ``strict``, the first row that would be skipped, or an empty shard.
    """
    if shard.kind == "files":
        out = ShardRows([Row(*item) for item in shard.items])
    elif shard.kind == "wds":
        out = _read_tar(shard.path, strict)
    elif shard.kind == "parquet":
        out = _read_parquet(shard, strict)
    else:
        raise SourceError(f"unknown input shard kind {shard.kind!r}")
    if strict and not out.rows:
        raise SourceError(f"{shard.input}: empty shard (no usable rows)")
    return out


def _skip(out: ShardRows, reason: str, where: str, strict: bool) -> None:
    if strict:
        raise SourceError(f"{where}: {reason.replace('_', ' ')}")
    out.skipped[reason] += 1


def _split_member(name: str) -> tuple[str, str] | None:
    """webdataset's convention: key = path up to the first dot of the file name."""
    path = PurePosixPath(name)
    if path.name.startswith(".") or "." not in path.name:
        return None
    stem, _, ext = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, ext.lower()


def _tar_groups(path: str):
    """(key, {ext: bytes}) per run of consecutive members with one key; a repeated
    extension starts a new group (so a repeated file reads as a duplicate sample)."""
    key, group = None, {}
    mode = "r:" if path.endswith(".tar") else "r:*"  # "r:*" would list every codec it tried
    with tarfile.open(path, mode) as tar:
        for member in tar:
            if not member.isfile():
                continue
            split = _split_member(member.name)
            if split is None:
                continue
            k, ext = split
            if group and (k != key or ext in group):
                yield key, group
                group = {}
            key = k
            group[ext] = tar.extractfile(member).read()
        if mode == "r:" and not _ends_with_zero_block(path, tar.offset):
            # tarfile takes a file cut at (or inside) a member header for the archive's end.
            raise tarfile.ReadError(f"no end-of-archive block at byte {tar.offset}: truncated")
    if group:
        yield key, group


def _ends_with_zero_block(path: str, offset: int) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        block = f.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


def _read_tar(path: str, strict: bool) -> ShardRows:
    out = ShardRows([])
    seen = set()
    try:
        if not os.path.isfile(path):
            raise FileNotFoundError("file not found")
        for key, group in _tar_groups(path):
            where = f"{path}: sample {key!r}"
            if key in seen:
                _skip(out, "duplicate_key", where, strict)
                continue
            seen.add(key)
            image = next((group[e] for e in IMAGE_EXTS if e in group), None)
            text = group.get("txt", b"").decode("utf-8", errors="replace").strip()
            if image is None:
                _skip(out, "missing_image", where, strict)
            elif not text:
                _skip(out, "missing_caption", where, strict)
            else:
                meta = group.get("json")
                out.rows.append(Row(key, image, text, -1, None if meta is None
                                    else meta.decode("utf-8", errors="replace")))
    except SourceError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        # A tar that breaks off mid-way fails whole: keeping its readable part would make
        # the shard's content depend on where the file happened to be cut.
        reason = " ".join(str(e).split())
        raise ShardReadError(f"{path}: cannot read tar shard ({type(e).__name__}: {reason})") from e
    return out


def _read_parquet(shard: InputShard, strict: bool) -> ShardRows:
    import pyarrow.parquet as pq

    out = ShardRows([])
    folder = Path(shard.path).parent
    try:
        table = pq.read_table(shard.path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise ShardReadError(f"{shard.path}: cannot read parquet shard "
                             f"({type(e).__name__}: {e})") from e
    names = table.column_names
    image_col = _pick(shard.image_col, IMAGE_COLUMNS, names, shard.path, "image")
    caption_col = _pick(shard.caption_col, CAPTION_COLUMNS, names, shard.path, "caption")
    keys = table.column("key").to_pylist() if "key" in names else None
    metas = table.column("json").to_pylist() if "json" in names else None
    seen = set()
    for i, (image, text) in enumerate(zip(table.column(image_col).to_pylist(),
                                          table.column(caption_col).to_pylist())):
        key = str(keys[i]) if keys is not None and keys[i] is not None else f"{i:09d}"
        where = f"{shard.path}: row {i} (key {key!r})"
        if key in seen:
            _skip(out, "duplicate_key", where, strict)
            continue
        seen.add(key)
        if isinstance(image, dict):  # the Hugging Face datasets Image struct
            image = image.get("bytes") or image.get("path")
        text = (text or "").strip() if isinstance(text, str) else ""
        if not image:
            _skip(out, "missing_image", where, strict)
        elif not text:
            _skip(out, "missing_caption", where, strict)
        else:
            if isinstance(image, str) and not os.path.isabs(image):
                image = str(folder / image)
            meta = metas[i] if metas is not None else None
            out.rows.append(Row(key, image, text, -1, meta if isinstance(meta, str) else None))
    return out


def _pick(given: str | None, candidates, names: list[str], path: str, what: str) -> str:
    if given:
        if given not in names:
            raise SourceError(f"{path}: no {what} column {given!r}; columns: {names}")
        return given
    for c in candidates:
        if c in names:
            return c
    raise SourceError(f"{path}: no {what} column (looked for {', '.join(candidates)}); "
                      f"name it in the spec parquet:PATTERN:IMAGE_COL:CAPTION_COL; "
                      f"columns: {names}")

