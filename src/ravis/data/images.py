"""Opening one image file strictly: fully decoded, RGB, or a :class:`BadImageError` naming it.

Every loader goes through :func:`open_image` so that a broken file fails the same way,
with its path, whatever the dataset. PIL is lenient in two ways we refuse:

* ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (set by some training scripts) makes PIL fill
  the missing rows of a truncated file with grey and say nothing. An embedding of half an
  image would then sit in a cache keyed as if the file were whole.
* Images over ``Image.MAX_IMAGE_PIXELS`` only *warn* up to twice that limit. A tiny PNG can
  claim 10^9 pixels; decoding it would take gigabytes before anything notices.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile

from .dataset import BadImageError

MAX_PIXELS = 89_478_485  # PIL's own default MAX_IMAGE_PIXELS (about 0.25 GiB for 24-bit RGB)

def to_rgb(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL mode to RGB. Transparent pixels are flattened onto ``background`` (white):
    converting RGBA straight to RGB would expose whatever colour the invisible pixels hold."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if image.mode == "I;16" or image.mode == "I":
        arr = np.asarray(image, dtype=np.float32)
        arr = 255 * (arr - arr.min()) / max(1.0, float(arr.max() - arr.min()))
        image = Image.fromarray(arr.astype(np.uint8))
    return image.convert("RGB")


# What the PIL plugins raise for files they cannot parse: OSError (truncated,
# UnidentifiedImageError), SyntaxError and ValueError (bad headers), struct.error and
# EOFError (short reads), IndexError (some plugins on crafted files), and the
# decompression-bomb pair.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)

_strict_lock = threading.Lock()
_strict_depth = 0
_saved_truncated_flag = False


@contextlib.contextmanager
def _no_truncated_loads() -> Iterator[None]:
    """Clears PIL's global LOAD_TRUNCATED_IMAGES while any ravis load is running.

    The flag is a module global read at decode time, so there is no per-call switch. When
    nobody has set it (the usual case) this changes nothing. When somebody has, the first
    concurrent ravis load clears it and the last one restores it; the lock is held only
    around the bookkeeping so decoding in several threads still runs in parallel.
    """
    global _strict_depth, _saved_truncated_flag
    with _strict_lock:
        if _strict_depth == 0:
            _saved_truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_depth += 1
    try:
        yield
    finally:
        with _strict_lock:
            _strict_depth -= 1
            if _strict_depth == 0 and _saved_truncated_flag:
                ImageFile.LOAD_TRUNCATED_IMAGES = True


def open_image(path: Path | str | bytes, max_pixels: int = MAX_PIXELS, where: str | None = None) -> Image.Image:
    """Reads and fully decodes one image file (or its encoded bytes) as RGB.

    Transparent pixels are flattened onto white (see
    :func:`to_rgb`); grey and palette images become RGB. For
    multi-frame files (GIF, TIFF) the first frame is used.

    Args:
        path: the image file, or the bytes of an encoded image.
        max_pixels: width * height above which the file is treated as a decompression bomb
            and refused before decoding. PIL's own hard limit (twice
            ``Image.MAX_IMAGE_PIXELS``) still applies if it is lower.
        where: what error messages name: the image among its collection (a tar member, a
            table row); a file's path follows it (default: the path alone).

    Raises:
        BadImageError: the file is missing, empty, truncated, not an image, or too large;
            the message starts with ``where`` and ``kind`` says which.
    """
    encoded = isinstance(path, (bytes, bytearray))
    if not encoded:
        where = f"{where}: {path}" if where else str(path)
    where = where or "image bytes"
    try:
        if (len(path) if encoded else os.path.getsize(path)) == 0:
            raise BadImageError(f"{where}: empty {'image' if encoded else 'file'} (0 bytes)", "empty")
        with _no_truncated_loads(), Image.open(io.BytesIO(path) if encoded else path) as im:
            # The size comes from the header, so a bomb is refused before any decoding.
            w, h = im.size
            if w * h > max_pixels:
                raise BadImageError(f"{where}: {w}x{h} = {w * h} pixels exceeds the limit of "
                                    f"{max_pixels} (possible decompression bomb)", "too_many_pixels")
            im.load()
            return to_rgb(im)
    except BadImageError:
        raise
    except FileNotFoundError as e:
        raise BadImageError(f"{where}: file not found", "missing") from e
    except Image.UnidentifiedImageError as e:
        raise BadImageError(f"{where}: not an image PIL can read", "not_an_image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(f"{where}: {e} (possible decompression bomb)", "too_many_pixels") from e
    except _DECODE_ERRORS as e:
        raise BadImageError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e
