"""open_image: strict decoding, and every failure a BadImageError naming the file."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from ravis.data import BadImageError, open_image
from ravis.data import images as images_module


def _noise_png(path, size=(64, 48)):
    # Noise does not compress, so half the file really is half the pixel data.
    arr = np.random.default_rng(0).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _png_header_only(path, width, height):
    """A PNG that claims width x height 1-bit pixels but holds almost no data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


def test_opens_rgb_and_flattens_transparency_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 200, 30)  # colour hidden under alpha 0 must not show
    rgba[0, 0] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((3, 5), 7, np.uint8)).save(tmp_path / "g.png")

    im = open_image(tmp_path / "a.png")
    assert im.mode == "RGB" and im.size == (4, 4)
    assert im.getpixel((0, 0)) == (255, 0, 0)
    assert im.getpixel((1, 1)) == (255, 255, 255)
    grey = open_image(str(tmp_path / "g.png"))
    assert grey.mode == "RGB" and grey.size == (5, 3) and grey.getpixel((0, 0)) == (7, 7, 7)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(BadImageError, match="empty") as e:
        open_image(path)
    assert str(path) in str(e.value) and e.value.kind == "empty"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(BadImageError, match="not found") as e:
        open_image(path)
    assert str(path) in str(e.value) and e.value.kind == "missing"


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a picture\n")
    with pytest.raises(BadImageError) as e:
        open_image(path)
    assert str(path) in str(e.value) and e.value.kind == "not_an_image"


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated(tmp_path, fmt):
    full = tmp_path / f"full.{fmt}"
    arr = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(full)
    cut = tmp_path / f"cut.{fmt}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    open_image(full)  # the whole file is fine
    with pytest.raises(BadImageError) as e:
        open_image(cut)
    assert str(cut) in str(e.value) and e.value.kind == "corrupt"


def test_truncated_refused_even_when_pil_is_told_to_accept_it(tmp_path, monkeypatch):
    path = _noise_png(tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(BadImageError) as e:
        open_image(cut)
    assert str(cut) in str(e.value)
    # Whoever set the flag gets it back, and ours leaves no depth behind.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    assert images_module._strict_depth == 0
    assert open_image(path).size == (64, 48)


def test_decompression_bomb_real_image(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 10^8 px > 89,478,485; a few kB on disk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(BadImageError, match="decompression bomb") as e:
            open_image(path)
    assert str(path) in str(e.value) and e.value.kind == "too_many_pixels"


def test_decompression_bomb_beyond_pils_hard_limit(tmp_path):
    path = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(BadImageError) as e:
        open_image(path)
    assert str(path) in str(e.value) and e.value.kind == "too_many_pixels"


def test_pixel_limit_is_a_parameter(tmp_path):
    path = _noise_png(tmp_path / "small.png", size=(64, 48))
    assert open_image(path, max_pixels=64 * 48).size == (64, 48)
    with pytest.raises(BadImageError, match="3072 pixels exceeds the limit of 3071") as e:
        open_image(path, max_pixels=64 * 48 - 1)
    assert str(path) in str(e.value) and e.value.kind == "too_many_pixels"


def test_the_kind_survives_pickling(tmp_path):
    import pickle

    with pytest.raises(BadImageError) as e:
        open_image(tmp_path / "absent.png")
    back = pickle.loads(pickle.dumps(e.value))
    assert (str(back), back.kind) == (str(e.value), "missing")
