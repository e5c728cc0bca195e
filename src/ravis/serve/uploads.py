"""Turning an untrusted upload into a decoded image, or a clear 4xx error.

A request's body is read with a cap before anything is parsed (:func:`read_upload`:
multipart, JSON with base64, or a raw image). Every refusal is an :class:`ApiError` with an HTTP status, a short machine-readable ``kind``
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
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..data.dataset import BadImageError
from ..data.images import open_image
from . import DEFAULT_MAX_PIXELS


class ApiError(Exception):
    """A request the server refuses: status, kind, message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message

    def body(self) -> dict:
        return {"error": {"kind": self.kind, "message": self.message, "status": self.status}}


_FIELDS = ("image", "file")  # multipart field names accepted for the upload
_SEND = ("send multipart/form-data with an 'image' file field, application/json with a base64 "
         "'image', or an image/* body")

# The HTTP answer to each way an upload fails to decode (BadImageError.kind).
_UPLOAD_ERRORS = {"empty": (400, "empty_upload"), "not_an_image": (400, "not_an_image"),
                  "too_many_pixels": (413, "too_many_pixels"), "corrupt": (400, "truncated_image")}


def image_from_upload(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decodes image bytes to RGB (transparency flattened on white), by
    :func:`ravis.data.images.open_image`, the decoder every dataset uses.

    Raises:
        ApiError: 400 empty_upload / not_an_image / truncated_image, 413 too_many_pixels
            (naming ``max_pixels``, the server's ``--max-pixels``).
    """
    try:
        return open_image(data, max_pixels, where=name)
    except BadImageError as e:
        status, kind = _UPLOAD_ERRORS.get(e.kind, (400, "truncated_image"))
        message = str(e)
        if kind == "too_many_pixels":  # the limit the client can act on is this server's
            message = f"{name}: the image exceeds this server's limit of {max_pixels:,} pixels (--max-pixels)"
        raise ApiError(status, kind, message) from e


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


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str, dict[str, str]]:
    """(image bytes, name, its label and caption fields) of a request carrying an image:
    multipart (the fields as form fields), JSON with base64, or a raw image/* (no fields).

    The body is read with a cap (room for base64 and multipart framing around ``max_bytes``
    of image) before any parsing, so an oversized request costs at most the cap.
    """
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime not in ("multipart/form-data", "application/json") and not mime.startswith("image/"):
        if _no_body(request):  # nothing sent at all: say what to send, not what type it lacks
            raise ApiError(400, "missing_image", f"the request has no image: {_SEND}")
        raise ApiError(415, "unsupported_media_type", f"Content-Type {mime or '(none)'} is not accepted: {_SEND}")
    cap = max_bytes * 4 // 3 + 64 * 1024
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        await _discard(request, int(length))
        raise _too_large(int(length), max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise _too_large(len(body), max_bytes)
    fields: dict[str, str] = {}
    if mime == "application/json":
        data, name, fields = image_from_json(bytes(body))
    elif mime == "multipart/form-data":
        data, name, fields = await _multipart_image(request, bytes(body))
    else:
        data, name = bytes(body), "upload"
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)
    return data, name, fields


def _no_body(request: Request) -> bool:
    """Whether the request carries no body (no length or length 0, and not chunked)."""
    headers = request.headers
    return headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers


DISCARD_LIMIT = 64 * 1024 * 1024


async def _discard(request: Request, length: int) -> None:
    """Reads and drops a refused body, so the client (still sending) gets to read the 413;
    a body over DISCARD_LIMIT is not read at all (the connection is closed on it)."""
    if length <= DISCARD_LIMIT:
        async for _ in request.stream():
            pass


def _too_large(size: int, max_bytes: int) -> ApiError:
    return ApiError(413, "upload_too_large",
                    f"the upload ({size} bytes or more) exceeds the limit of {max_bytes} bytes")


async def _multipart_image(request: Request, body: bytes) -> tuple[bytes, str, dict[str, str]]:
    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=2, max_fields=16).parse()
    except MultiPartException as e:
        raise ApiError(400, "bad_multipart", f"cannot parse the multipart body: {e.message}") from e
    upload = next((form[f] for f in _FIELDS if isinstance(form.get(f), UploadFile)), None)
    if upload is None:
        raise ApiError(400, "missing_image", "multipart body needs a file field named 'image'")
    declared = (upload.content_type or "").lower()
    if declared and not (declared.startswith("image/") or declared == "application/octet-stream"):
        raise ApiError(415, "unsupported_media_type",
                       f"{upload.filename or 'upload'}: file part has Content-Type {declared}, not image/*")
    data = await upload.read()
    fields = text_fields({k: v for k, v in form.items() if isinstance(v, str)})
    await form.close()
    return data, (upload.filename or "upload")[:200], fields


__all__ = ["ApiError", "image_from_json", "image_from_upload", "json_object", "read_upload", "text_fields"]
