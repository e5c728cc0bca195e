"""The pipeline that builds memory shards: reading and decoding ahead of the encoders,
writing behind them (see :func:`ravis.memory.shard_build.build_shards`).

The encoders are the ceiling; everything else overlaps them. A reader thread reads the
input shards in order and hands each batch of rows to ``decode_workers`` threads (decode,
resize, thumbnail; PIL releases the GIL), at most ``decode_workers + 2`` batches ahead of
the encoders and across shard boundaries, so the next shard's first batches are decoded
while the last one's captions are encoded. The encoders run on the calling thread, on the
same batches in the same order as for one shard built alone, so the bytes do not depend on
the overlap. A writer thread converts, writes and hashes shard n while shard n + 1 encodes.
The queues are bounded: besides the shard being encoded, at most one input shard's rows,
``decode_workers + 3`` batches decoded or decoding and one shard being written are held.

Overlap hides only what runs on otherwise idle cores. Where the encoders' own threads
already keep every core busy (2 cores, onnxruntime on both), decoding still costs its CPU
time; measured on such a machine, it is about a quarter of the encoders' (PNG stamps).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import MemoryBuildConfig
from ..data.dataset import BadImageError
from ..encoders.base import l2_normalize
from ..encoders.embed import _check_rows
from ..thumbnails import make_thumbnail
from .sharded import meta_table, write_shard
from ..data.images import open_image
from ..data.sources import InputShard, ShardReadError, read_rows

log = logging.getLogger("ravis.memory.shard_build")

# ---------------------------------------------------------------------------------------------
# Encoders, once per process (Ray workers included)


_ENCODERS: dict[tuple, object] = {}


def load_encoders(settings: MemoryBuildConfig):
    """(image encoder, text encoder), created once per process and thread count."""
    from ..encoders import create_image_encoder, create_text_encoder

    out = []
    for kind, spec, create in (("image", settings.image_encoder, create_image_encoder),
                               ("text", settings.text_encoder, create_text_encoder)):
        key = (kind, spec, settings.num_threads)
        if key not in _ENCODERS:
            if settings.num_threads is None:
                _ENCODERS[key] = create(spec)
            else:
                try:
                    _ENCODERS[key] = create(spec, num_threads=settings.num_threads)
                except TypeError:  # an adapter without a thread setting (torch-based ones)
                    _ENCODERS[key] = create(spec)
        out.append(_ENCODERS[key])
    return tuple(out)


THUMBNAIL_SIDE = 64  # long side of the thumbnails a memory shard keeps (JPEG; PNG for images of 32 px or less)


@dataclass
class Batch:
    """One batch of rows, decoded and resized on a decoding thread."""

    ok: list[int]  # positions within the batch of the decodable rows
    pixels: np.ndarray | None  # (len(ok), ...) stacked encoder inputs; None if none decoded
    thumbnails: list  # per row: a thumbnail (JPEG or PNG), or None (no thumbnails, or undecodable)
    contents: list  # per row: the 16-byte blake2b of the image's bytes, None if unreadable


def encode(rows, skipped, next_batch, image_encoder, text_encoder, where: str,
           batch_size: int):
    """(kept rows, keys, values, thumbnails, content hashes) of one shard whose decoded
    batches come from ``next_batch()``; undecodable rows are dropped and counted in
    ``skipped``."""
    dim = int(image_encoder.dim)
    parts, valid, thumbs, contents = [], [], [], []
    for start in range(0, len(rows), batch_size):
        chunk, batch = rows[start:start + batch_size], next_batch()
        if batch.ok:
            out = _check_rows(image_encoder.encode_pixels(batch.pixels), len(batch.ok), dim,
                              image_encoder.name,
                              lambda k: f"{where}: image {chunk[batch.ok[k]].key}")
            parts.append(l2_normalize(out))
        ok = set(batch.ok)
        valid += [k in ok for k in range(len(chunk))]
        thumbs += batch.thumbnails
        contents += batch.contents
    skipped["bad_image"] += valid.count(False)
    keys = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)  # (n, dim)
    kept = [r for r, ok in zip(rows, valid) if ok]
    values = embed_texts([r.text for r in kept], text_encoder, where)
    return (kept, keys, values, [t for t, ok in zip(thumbs, valid) if ok],
            [c for c, ok in zip(contents, valid) if ok])


def write(memdir: str, name: str, shard: InputShard, kept, keys, values, thumbs, contents,
          skipped, dtype: str) -> dict:
    """Writes one shard's files and returns its manifest entry (on the writer thread)."""
    meta = meta_table(ids=[f"{name}/{r.key}" for r in kept], texts=[r.text for r in kept],
                      sources=[shard.collection] * len(kept), labels=[r.label for r in kept],
                      thumbnails=thumbs, jsons=[r.json for r in kept], contents=contents)
    files = write_shard(Path(memdir), name, keys.astype(dtype), values.astype(dtype), meta)
    return {"name": name, "input": shard.input, "rows": len(kept),
            "skipped": {k: v for k, v in sorted(skipped.items()) if v}, "files": files}


def embed_texts(texts: list[str], encoder, where: str) -> np.ndarray:
    dim = int(encoder.dim)
    if not texts:
        return np.zeros((0, dim), np.float32)
    return _check_rows(encoder.encode_texts(texts), len(texts), dim, encoder.name,
                       lambda k: f"{where}: caption {texts[k][:80]!r}")


class Reader:
    """Reads input shards on a thread and decodes their batches on ``decode_workers`` more.

    :meth:`shards` gives (name, input shard, rows, skipped) per shard, the rows without their
    image bytes (rows None and the error message for an unreadable shard); after each,
    :meth:`next_batch` gives its decoded batches in order. An error on a reading or decoding
    thread is raised by these, in its place in the stream.
    """

    def __init__(self, jobs, encoder, settings: MemoryBuildConfig):
        self.queue: queue.Queue = queue.Queue(maxsize=settings.decode_workers + 2)
        self.stopped = threading.Event()
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="ravis-decode")
        self.thread = threading.Thread(target=self._read, args=(list(jobs), encoder, settings),
                                       name="ravis-read", daemon=True)
        self.thread.start()

    def _read(self, jobs, encoder, settings: MemoryBuildConfig) -> None:
        try:
            for name, shard in jobs:
                try:
                    read = read_rows(shard, settings.strict)
                except ShardReadError as e:
                    if settings.strict:
                        raise
                    if not self._put((name, shard, None, str(e))):
                        return
                    continue
                rows = read.rows
                # The encoding side keeps the rows for the metadata; the image bytes only
                # travel with their batch, so they are freed once it is decoded.
                if not self._put((name, shard, [replace(r, image=None) for r in rows],
                                  read.skipped)):
                    return
                del read
                for start in range(0, len(rows), settings.batch_size):
                    if not self._put(self._submit(rows[start:start + settings.batch_size],
                                                  encoder, shard.input, settings)):
                        return
                del rows
        except BaseException as e:  # noqa: BLE001 - raised again on the encoding thread
            self._put(e)
        else:
            self._put(None)

    def _submit(self, rows, encoder, where: str, settings: MemoryBuildConfig) -> list:
        """The futures of one batch (a list; shard headers are tuples), cut in one part per
        decoding thread: the batch the encoder waits for (the first one, above all) is
        decoded by all of them."""
        step = -(-len(rows) // settings.decode_workers)
        return [self.pool.submit(prepare, rows[i:i + step], encoder, where, settings)
                for i in range(0, len(rows), step)]

    def _put(self, item) -> bool:
        """Queues ``item``, waiting for room; False once the pipeline is closed."""
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        _cancel(item)
        return False

    def _get(self):
        while True:
            try:
                item = self.queue.get(timeout=1.0)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError("the shard reader thread ended without a word") from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def shards(self):
        while (item := self._get()) is not None:
            yield item

    def next_batch(self) -> Batch:
        """The next batch of the current shard, its parts joined."""
        ok, pixels, thumbs, contents = [], [], [], []
        for future in self._get():
            part = future.result()
            ok += [len(thumbs) + k for k in part.ok]
            thumbs += part.thumbnails
            contents += part.contents
            if part.pixels is not None:
                pixels.append(part.pixels)
        return Batch(ok, np.concatenate(pixels) if pixels else None, thumbs, contents)

    def close(self) -> None:
        """Stops reading and decoding (what is under way finishes) and ends the threads."""
        self.stopped.set()
        while not self.queue.empty():
            _cancel(self.queue.get_nowait())
        self.thread.join()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _cancel(item) -> None:
    if isinstance(item, list):  # a batch's futures
        for future in item:
            future.cancel()


def prepare(rows, encoder, where: str, settings: MemoryBuildConfig) -> Batch:
    """Decodes, resizes and thumbnails rows (a batch or a part of one), on a decoding thread."""
    ok, pixels, thumbs, contents = [], [], [], []
    for k, row in enumerate(rows):
        try:
            # the bytes are read once: hashed (the same image through two sources is found
            # by it) and decoded from memory
            data = row.image if isinstance(row.image, bytes) else Path(row.image).read_bytes()
            image = open_image(data, where=row.image if isinstance(row.image, str) else f"{where}: {row.key}")
            x = encoder.preprocess(image)
        except (BadImageError, OSError) as e:
            if settings.strict:
                raise BadImageError(f"{where}: {row.key}: {e}") from e
            log.info("skipping %s: %s", row.key, e)
            thumbs.append(None)
            contents.append(None)
            continue
        ok.append(k)
        pixels.append(x)
        thumbs.append(make_thumbnail(image, THUMBNAIL_SIDE) if settings.thumbnails else None)
        contents.append(hashlib.blake2b(data, digest_size=16).digest())
    return Batch(ok, np.stack(pixels) if pixels else None, thumbs, contents)
