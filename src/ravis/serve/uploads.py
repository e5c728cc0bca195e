"""Turning an untrusted upload into a decoded image, or a clear 4xx error.

Every refusal is an :class:`ApiError` with an HTTP status, a short machine-readable ``kind``
(also the label of the ``ravis_errors_total`` metric) and a message naming the problem.
Decoding is :func:`ravis.data.images.open_image`'s, strict: truncated files are refused (not
grey-filled), and the pixel count is read from the header and checked before decoding, so a
small file that claims a gigapixel image costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import json

from PIL import Image

from ..data.dataset import BadImageError
from ..data.images import open_image

DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # 10 MB
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: any camera photo; far below what would exhaust RAM


class ApiError(Exception):
    """A request the server refuses: status, kind, message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message

    def body(self) -> dict:
        return {"error": {"kind": self.kind, "message": self.message, "status": self.status}}


# The HTTP answer to each way an upload fails to decode (BadImageError.kind).
_UPLOAD_ERRORS = {"empty": (400, "empty_upload"), "not_an_image": (400, "not_an_image"),
                  "too_many_pixels": (413, "too_many_pixels"), "corrupt": (400, "truncated_image")}


def decode_image(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decodes image bytes to RGB (transparency flattened on white), by
    :func:`ravis.data.images.open_image`, the decoder every dataset uses.

    Raises:
        ApiError: 400 empty_upload / not_an_image / truncated_image, 413 too_many_pixels.
    """
    try:
        return open_image(data, max_pixels, where=name)
    except BadImageError as e:
        status, kind = _UPLOAD_ERRORS.get(e.kind, (400, "truncated_image"))
        raise ApiError(status, kind, str(e)) from e


def json_object(body: bytes) -> dict:
    """A JSON request body that must be an object."""
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "bad_json", f"the request body is not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object")
    return obj


def text_fields(obj: dict, names=("label", "caption")) -> dict[str, str]:
    """The string fields ``names`` of a JSON object or form (others are ignored)."""
    out = {}
    for n in names:
        v = obj.get(n)
        if v is not None and not isinstance(v, str):
            raise ApiError(400, "bad_field", f'"{n}" must be a string')
        if v is not None:
            out[n] = v[:1000]
    return out


def image_from_json(body: bytes) -> tuple[bytes, str, dict[str, str]]:
    """(image bytes, name, label and caption fields) from a JSON body ``{"image": "<base64>",
    "name": "...", "label": ..., "caption": ...}``; a ``data:image/...;base64,`` prefix is
    accepted."""
    obj = json_object(body)
    if not isinstance(obj.get("image"), str):
        raise ApiError(400, "missing_image", 'JSON body needs "image": a base64 string of the file')
    text = obj["image"]
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, "bad_base64", f'"image" is not valid base64 ({e})') from e
    name = obj.get("name") if isinstance(obj.get("name"), str) else "upload"
    return data, name[:200], text_fields(obj)


__all__ = ["ApiError", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "decode_image", "image_from_json",
           "json_object", "text_fields"]
