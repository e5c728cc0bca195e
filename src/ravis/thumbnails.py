"""Thumbnail stores: small image bytes per item id, so a run folder can show its memory.

A store is one parquet file with two columns, ``id`` (string) and ``image`` (JPEG or PNG
bytes, at most ``size`` pixels on the long side, flattened on white). Nothing in it is a
path: the server looks an id up in the table, never on the filesystem.

    write_thumbnails(path, dataset, rows)            # at the end of a run
    store = ThumbnailStore.open(path)
    store.get("fashion-mnist/train/12")             # -> (bytes, "image/png") or None
"""

from __future__ import annotations

import io
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.dataset import BadImageError, ImageDataset
from ..encoders.preprocess import to_rgb
from ..io import atomic_path, stable_hash

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


def write_thumbnails(path: Path | str, dataset: ImageDataset, rows=None, *, size: int = THUMBNAIL_SIZE,
                     cache_dir: Path | None = None, workers: int | None = None) -> Path:
    """Writes the thumbnails of ``dataset``'s items ``rows`` (default all) to ``path``.

    With ``cache_dir``, the file is made once per (dataset, rows, size) under
    ``cache_dir/thumbnails`` and hard-linked (or copied) to ``path``: the three Fashion-MNIST
    experiments of the demo share one 60k-image store.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    cached = None
    if cache_dir is not None:
        key = stable_hash("thumbnails-v1", dataset.fingerprint, rows, size)
        cached = Path(cache_dir) / "thumbnails" / f"{key}.parquet"
        if cached.exists():
            _link_or_copy(cached, path)
            return path
    images = _render(dataset, rows, size, workers or os.cpu_count() or 1)
    ok = [j for j, b in enumerate(images) if b is not None]
    table = pa.table({"id": pa.array([dataset.ids[rows[j]] for j in ok], pa.string()),
                      "image": pa.array([images[j] for j in ok], pa.binary())})
    target = cached or path
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="none")  # JPEG/PNG bytes do not compress further
    if cached is not None:
        _link_or_copy(cached, path)
    return path


def append_thumbnails(path: Path | str, ids: list[str], images: list[bytes]) -> None:
    """Adds (id, image bytes) rows to the store at ``path`` (rewritten atomically, so a hard
    link to a cached store is left as it was)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    extra = pa.table({"id": pa.array(ids, pa.string()), "image": pa.array(images, pa.binary())})
    table = pa.concat_tables([pq.read_table(path, columns=["id", "image"]), extra]) if path.exists() else extra
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="none")


def _link_or_copy(src: Path, dst: Path) -> None:
    """dst becomes src's content, atomically; a hard link where the filesystem allows."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


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
            raise ValueError(f"{path}: not a ravis thumbnail store ({e})") from e
        return cls(table.column("id").to_pylist(), table.column("image").to_pylist())

    @classmethod
    def empty(cls) -> "ThumbnailStore":
        return cls([], [])

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    def get(self, item_id: str) -> tuple[bytes, str] | None:
        """(image bytes, MIME type) of ``item_id``, or None if the store has no such id."""
        row = self._rows.get(item_id)
        if row is None:
            return None
        data = self._images[row]
        return data, media_type(data)


__all__ = ["THUMBNAIL_SIZE", "ThumbnailStore", "append_thumbnails", "make_thumbnail", "media_type",
           "write_thumbnails"]
