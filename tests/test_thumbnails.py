"""Thumbnails: written once per dataset and read back by id, a damaged cached store rendered
again, and each thumbnail bounded in size and flattened on white."""

import io

import numpy as np
from PIL import Image

from ravis.data import load_fashion_mnist
from ravis.thumbnails import ThumbnailStore, make_thumbnail, write_thumbnails


def test_thumbnails_round_trip_and_cache(tmp_path):
    data = load_fashion_mnist().test.subset(np.arange(12))
    cache = tmp_path / "cache"
    a = write_thumbnails(tmp_path / "a.parquet", data, [3, 5, 7], cache_dir=cache)
    b = write_thumbnails(tmp_path / "b.parquet", data, [3, 5, 7], cache_dir=cache)
    assert a.read_bytes() == b.read_bytes()
    store = ThumbnailStore.open(a)
    assert len(store) == 3 and store.get(data.ids[0]) is None
    raw, mime = store.get(data.ids[5])
    assert mime == "image/png"

    im = Image.open(io.BytesIO(raw))
    assert im.size == (28, 28)
    assert np.array_equal(np.asarray(im), np.asarray(data.load_image(5)))  # lossless for grey


def test_a_damaged_cached_thumbnail_store_is_rendered_again(tmp_path, caplog):
    """The cached store is sealed with its sha256: a changed byte is rendered again, not served."""
    from ravis.thumbnails import thumbnail_bytes

    data = load_fashion_mnist().test.subset(np.arange(6))
    cache = tmp_path / "cache"
    first = thumbnail_bytes(data, [1, 2], cache_dir=cache)
    (store,) = (cache / "thumbnails").glob("*.parquet")
    raw = bytearray(store.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    store.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        again = thumbnail_bytes(data, [1, 2], cache_dir=cache)
    assert again == first and str(store) in caplog.text


def test_make_thumbnail_bounds_and_flattens():
    rgba = Image.new("RGBA", (400, 200), (255, 0, 0, 0))  # fully transparent red

    im = Image.open(io.BytesIO(make_thumbnail(rgba)))
    assert im.format == "JPEG" and max(im.size) == 96
    assert np.asarray(im).min() > 240  # flattened on white, not red
