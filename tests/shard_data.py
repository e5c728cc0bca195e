"""Helpers that write tiny image-text collections in the shapes img2dataset and parquet
exports take (used by conftest.py's fixtures and the tests)."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_image(seed: int, fmt: str = "JPEG", size=(96, 72)) -> bytes:
    """A small picture: a coloured background with a shape whose kind depends on the seed."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(im)
    box = [int(v) for v in (*rng.integers(0, 30, 2), *rng.integers(50, 90, 2))]
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    (draw.ellipse if seed % 2 else draw.rectangle)(box, fill=fill)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, samples) -> None:
    """samples: (key, {ext: bytes}) in order, as img2dataset writes them."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                add_member(tar, f"{key}.{ext}", data)


def good_sample(key: str, seed: int, fmt: str = "jpg"):
    pil = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    return key, {fmt: make_image(seed, pil), "txt": f"a picture number {seed}".encode(),
                 "json": json.dumps({"key": key, "url": f"http://x/{seed}"}).encode()}
