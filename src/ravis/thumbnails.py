"""Thumbnail stores: small image bytes per item id, so a run folder can show its memory.

A store is one parquet file with two columns, ``id`` (string) and ``image`` (JPEG or PNG
bytes, at most ``size`` pixels on the long side, flattened on white). Nothing in it is a
path: the server looks an id up in the table, never on the filesystem.

    write_thumbnails(path, dataset, rows)            # the test images, at the end of a run
    thumbnail_bytes(dataset, rows, cache_dir=...)    # a memory part's thumbnails
    store = ThumbnailStore.open(path)
    store.get("fashion-mnist/train/12")             # -> (bytes, "image/png") or None
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .data.dataset import BadImageError, ImageDataset
from .data.images import to_rgb
from .cache import entry_lock, is_sealed, seal
from .errors import InputError
from .io import atomic_path, link_or_copy, stable_hash

THUMBNAIL_SIZE = 96  # long side in pixels: enough for a gallery tile, about 2-4 kB each


def make_thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """PNG for small or grey images (sharp, and smaller than JPEG there), JPEG otherwise."""
    grey = image.mode in ("L", "1")
    image = image.convert("L") if grey else to_rgb(image)
    if max(image.size) > size:
        image = image.copy()
        image.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    if grey or max(image.size) <= 32:
        image.save(buf, format="PNG", optimize=True)
    else:
        image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def media_type(data: bytes) -> str:
    """The MIME type of thumbnail bytes (from their magic number)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"


def _render(dataset: ImageDataset, rows: np.ndarray, size: int, workers: int) -> list[bytes | None]:
    def one(i: int) -> bytes | None:
        try:
            return make_thumbnail(dataset.load_image(int(i)), size)
        except BadImageError:  # an unreadable item simply has no thumbnail
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL
        return list(pool.map(one, rows, chunksize=256))


def thumbnail_bytes(dataset: ImageDataset, rows=None, *, size: int = THUMBNAIL_SIZE,
                    cache_dir: Path | None = None, workers: int | None = None) -> list[bytes]:
    """Thumbnails of ``dataset``'s items ``rows`` (default all), b"" where an image cannot be
    read; with ``cache_dir`` rendered once per (dataset, rows, size) and kept there."""
    import pyarrow.parquet as pq

    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    if cache_dir is None:
        return [b or b"" for b in _render(dataset, rows, size, workers or os.cpu_count() or 1)]
    cached = _cached_store(dataset, rows, size, Path(cache_dir), workers)
    table = pq.read_table(cached, columns=["id", "image"]).to_pydict()
    found = dict(zip(table["id"], table["image"]))
    return [found.get(dataset.ids[r], b"") for r in rows]


def _cached_store(dataset: ImageDataset, rows: np.ndarray, size: int, cache_dir: Path,
                  workers: int | None) -> Path:
    cached = cache_dir / "thumbnails" / f"{stable_hash('thumbnails-v1', dataset.fingerprint, rows, size)}.parquet"
    cached.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(cached):
        if not is_sealed(cached):
            _write_store(cached, dataset, rows, _render(dataset, rows, size, workers or os.cpu_count() or 1))
            seal(cached)
    return cached


def _write_store(path: Path, dataset: ImageDataset, rows: np.ndarray, images: list) -> None:
    write_store(path, [dataset.ids[r] for r in rows], images)


def write_store(path: Path, ids: list[str], images: list) -> None:
    """An id -> image bytes store (:class:`ThumbnailStore`'s file); None images are left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ok = [j for j, b in enumerate(images) if b is not None]
    table = pa.table({"id": pa.array([ids[j] for j in ok], pa.string()),
                      "image": pa.array([images[j] for j in ok], pa.binary())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="none")  # JPEG/PNG bytes do not compress further


def write_thumbnails(path: Path | str, dataset: ImageDataset, rows=None, *, size: int = THUMBNAIL_SIZE,
                     cache_dir: Path | None = None, workers: int | None = None) -> Path:
    """Writes the thumbnail store of ``dataset``'s items ``rows`` (default all) to ``path``.

    With ``cache_dir``, the store is made once per (dataset, rows, size) under
    ``cache_dir/thumbnails`` and hard-linked (or copied) to ``path``.
    """
    path = Path(path)
    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    if cache_dir is None:
        _write_store(path, dataset, rows, _render(dataset, rows, size, workers or os.cpu_count() or 1))
    else:
        link_or_copy(_cached_store(dataset, rows, size, Path(cache_dir), workers), path)
    return path


class ThumbnailStore:
    """Read-only id -> thumbnail bytes, held in RAM (about 1 kB per item)."""

    def __init__(self, ids: list[str], images: list[bytes]):
        self._rows = {i: r for r, i in enumerate(ids)}
        self._images = images

    @classmethod
    def open(cls, path: Path | str) -> "ThumbnailStore":
        import pyarrow.parquet as pq

        path = Path(path)
        try:
            table = pq.read_table(path, columns=["id", "image"])
        except (OSError, ValueError, KeyError) as e:  # ArrowInvalid is a ValueError
            raise InputError(f"{path}: not a ravis thumbnail store ({e})") from e
        return cls(table.column("id").to_pylist(), table.column("image").to_pylist())

    @classmethod
    def empty(cls) -> "ThumbnailStore":
        return cls([], [])

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    def ids(self) -> list[str]:
        """The stored ids, in the store's order."""
        return list(self._rows)

    def get(self, item_id: str) -> tuple[bytes, str] | None:
        """(image bytes, MIME type) of ``item_id``, or None if the store has no such id."""
        row = self._rows.get(item_id)
        if row is None:
            return None
        data = self._images[row]
        return data, media_type(data)


__all__ = ["THUMBNAIL_SIZE", "ThumbnailStore", "make_thumbnail", "media_type", "thumbnail_bytes",
           "write_thumbnails"]
