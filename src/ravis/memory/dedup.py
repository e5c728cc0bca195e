"""Exact duplicate images across the shards of a memory, found by the hash of their bytes.

The same image reached through two sources of one build (Tux Paint's stamps and a folder
that copied some of them), or listed twice, would otherwise be stored twice: retrieved
twice, it counts twice in every vote and draws attention twice. Every shard's metadata
holds the 16-byte blake2b of each row's image bytes (``content``); once a build or an add
has written its shards, :func:`drop_duplicate_images` keeps the first copy of each image,
in shard order, and rewrites the shards of this run without the other copies, counted in
their ``skipped`` as ``duplicate_image``.

Shards written by an earlier run are never rewritten (an index may refer to their rows):
an image they hold is dropped from the new shards instead. Rows without a hash (shards of
an older ravis, clip-retrieval imports) are kept and not compared. The hashes are held as
one array of 16 bytes per row, never a Python object per row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .sharded import shard_file, write_shard

log = logging.getLogger(__name__)

REASON = "duplicate_image"


def content_hashes(memdir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """((rows,) 16-byte hashes, (rows,) bool known) of one shard's images."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(memdir) / shard_file(name, "meta")
    if "content" not in pq.read_schema(path).names:
        rows = pq.ParquetFile(path).metadata.num_rows
        return np.zeros(rows, "V16"), np.zeros(rows, bool)
    col = pq.read_table(path, columns=["content"]).column("content").combine_chunks()
    known = col.is_valid().to_numpy(zero_copy_only=False)
    if not known.any():
        return np.zeros(len(col), "V16"), known
    # fixed-width view of the bytes: nulls become zeros first (their bytes are undefined)
    fixed = pc.fill_null(col, b"\0" * 16).cast(pa.binary(16))
    data = np.frombuffer(fixed.buffers()[1], "V16", count=len(fixed) + fixed.offset)
    return data[fixed.offset:].copy(), known


def drop_duplicate_images(memdir: Path, shards: list[dict], built: set[str]) -> list[dict]:
    """Rewrites the shards named in ``built`` without rows whose image bytes equal those of
    an earlier row (in any shard not in ``built``, or earlier in name order); returns their
    new manifest entries (only of shards that changed)."""
    order = sorted((s for s in shards if s["name"] not in built), key=lambda s: s["name"]) + \
        sorted((s for s in shards if s["name"] in built), key=lambda s: s["name"])
    if not any(s["name"] in built for s in order):
        return []
    parts = [content_hashes(memdir, s["name"]) for s in order]
    hashes = np.concatenate([h for h, _ in parts])
    known = np.concatenate([k for _, k in parts])
    at = np.flatnonzero(known)
    _, first = np.unique(hashes[at], return_index=True)  # the first copy of each image
    keep = ~known
    keep[at[first]] = True
    changed, start = [], 0
    for s, (h, _) in zip(order, parts):
        mine, start = keep[start:start + len(h)], start + len(h)
        if s["name"] in built and not mine.all():
            changed.append(_rewrite(memdir, s, mine))
    dropped = int((~keep).sum())
    if dropped:
        log.warning("%s: %d rows were exact copies of images already in the memory (same bytes, "
                    "another source or a repeat); only the first copy is kept", memdir, dropped)
    return changed


def _rewrite(memdir: Path, entry: dict, keep: np.ndarray) -> dict:
    """The shard without the rows ``~keep``; each file replaced atomically. A crash between
    them leaves files that disagree with the manifest, so the next build redoes the shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = entry["name"]
    keys = np.load(memdir / shard_file(name, "keys"), allow_pickle=False)[keep]
    values = np.load(memdir / shard_file(name, "values"), allow_pickle=False)[keep]
    meta = pq.read_table(memdir / shard_file(name, "meta")).filter(pa.array(keep))
    skipped = dict(entry["skipped"])
    skipped[REASON] = skipped.get(REASON, 0) + int((~keep).sum())
    return {**entry, "rows": int(keep.sum()), "skipped": dict(sorted(skipped.items())),
            "files": write_shard(memdir, name, keys, values, meta)}
