"""The prediction service: ``POST /predict``, the page at ``/``, thumbnails, health, metrics.

    app = create_app(Predictor.load("demo-out", experiment="tuxpaint"))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Requests are read with a size cap before anything is parsed; images are decoded strictly
(see :mod:`ravis.serve.uploads`); the model runs one request at a time on a worker thread
(on a small CPU, concurrent model calls only fight over the cores), and the time spent
waiting for it is reported as the ``queue`` stage. Thumbnails are read by memory row from
the memory's metadata: no part of a request path ever reaches the filesystem.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from .edits import add_edit_routes
from .metrics import ServerMetrics
from .models import ServedModels
from ..thumbnails import media_type
from .uploads import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ApiError, decode_image, image_from_json, text_fields

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
_FIELDS = ("image", "file")  # multipart field names accepted for the upload


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: requests pick among these names, never a path."""
    return {p.name: (p.read_bytes(), STATIC_TYPES[p.suffix]) for p in STATIC_DIR.iterdir()
            if p.suffix in STATIC_TYPES}


def create_app(predictor, *, max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, edit_token: str | None = None,
               models: ServedModels | None = None) -> FastAPI:
    """A FastAPI app serving ``predictor`` (a :class:`ravis.predictor.Predictor`) and, with
    ``models``, the run's other experiments and methods (``?experiment=&method=``); with
    ``edit_token``, memories can be edited by requests that carry it (:mod:`.edits`)."""
    # No /docs: FastAPI's docs page loads its scripts from a CDN, and this runs offline.
    app = FastAPI(title="ravis", docs_url=None, redoc_url=None, openapi_url=None)
    models = models or ServedModels(predictor, getattr(predictor, "run_dir", None))
    metrics = ServerMetrics(getattr(predictor.memory, "live_count", len(predictor.memory)))
    model_lock = threading.Lock()
    static = _static_files()
    app.state.predictor, app.state.metrics = predictor, metrics

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    def refuse(error: ApiError) -> JSONResponse:
        metrics.errors.labels(error.kind).inc()
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return refuse(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return refuse(ApiError(exc.status_code, kind, f"{request.method} {request.url.path}: {exc.detail}"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return refuse(ApiError(400, "bad_request", str(exc.errors())[:500]))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return refuse(ApiError(500, "internal", f"{type(exc).__name__}: {exc}"))

    def chosen(request: Request):
        q = request.query_params
        return models.get(q.get("experiment") or None, q.get("method") or None)

    def predict_bytes(p, data: bytes, name: str) -> dict:
        t0 = time.perf_counter()
        image = decode_image(data, name, max_pixels)
        t1 = time.perf_counter()
        with model_lock:
            t2 = time.perf_counter()
            out = p.predict([image])[0]
        stages = {"decode": t1 - t0, "queue": t2 - t1, **{k: v / 1e3 for k, v in out["timings_ms"].items()}}
        metrics.observe_stages(stages)
        out["timings_ms"] = {k: 1e3 * v for k, v in stages.items()}
        out["image"] = {"name": name, "bytes": len(data), "width": image.width, "height": image.height}
        where = urlencode({"experiment": p.experiment.name})
        for n in out["neighbors"]:
            n["thumbnail"] = f"/memory/rows/{n['row']}/thumbnail?{where}" if n["has_thumbnail"] else None
        return out

    @app.post("/predict")
    async def predict(request: Request):
        p = await run_in_threadpool(chosen, request)  # a first use loads the model
        data, name, _ = await read_upload(request, max_bytes)
        return JSONResponse(await run_in_threadpool(predict_bytes, p, data, name))

    @app.get("/models")
    def list_models():
        return {"default": {"experiment": predictor.experiment.name, "method": predictor.method},
                "models": models.choices()}

    @app.get("/samples")
    def samples(request: Request):
        name = request.query_params.get("experiment") or predictor.experiment.name
        where = urlencode({"experiment": name})
        return {"experiment": name,
                "samples": [{"id": i, "label": label, "url": f"/samples/{j}?{where}"}
                            for j, (i, label, _) in enumerate(models.samples(name))]}

    @app.get("/samples/{index}")
    def sample(index: int, request: Request):
        found = models.samples(request.query_params.get("experiment") or None)
        if not 0 <= index < len(found):
            raise ApiError(404, "unknown_sample", f"no sample {index}")
        data = found[index][2]
        return Response(data, media_type=media_type(data), headers={"Cache-Control": "max-age=86400"})

    @app.get("/memory/rows/{row}/thumbnail")
    def thumbnail(row: int, request: Request):
        found = chosen(request).thumbnail(row)  # read from the memory's metadata, never a path
        if found is None:
            raise ApiError(404, "unknown_memory_row", f"no thumbnail for memory row {row}")
        data, media_type = found
        return Response(data, media_type=media_type, headers={"Cache-Control": "max-age=86400"})

    add_edit_routes(app, models, chosen, token=edit_token, model_lock=model_lock, metrics=metrics,
                    max_bytes=max_bytes, max_pixels=max_pixels, read_upload=read_upload)

    @app.get("/healthz")
    def healthz(request: Request):
        p = chosen(request)  # the started model, or the one ?experiment=&method= names
        return {"status": "ok", "experiment": p.experiment.name, "method": p.method,
                "memory_size": p.memory.live_count, "edits_allowed": edit_token is not None,
                "k": p.k, "classes": len(p.all_class_names), "max_upload_bytes": max_bytes,
                "max_pixels": max_pixels}

    @app.get("/metrics")
    def prometheus():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/")
    def page():
        body, content_type = static["index.html"]
        return Response(body, media_type=content_type)

    @app.get("/static/{name}")
    def static_file(name: str):
        if name not in static:
            raise ApiError(404, "not_found", f"no static file {name[:100]!r}")
        body, content_type = static[name]
        return Response(body, media_type=content_type)

    return app


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str, dict[str, str]]:
    """(image bytes, name, its label and caption fields) of a request carrying an image:
    multipart (the fields as form fields), JSON with base64, or a raw image/* (no fields).

    The body is read with a cap (room for base64 and multipart framing around ``max_bytes``
    of image) before any parsing, so an oversized request costs at most the cap.
    """
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime not in ("multipart/form-data", "application/json") and not mime.startswith("image/"):
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {mime or '(none)'} is not accepted: send multipart/form-data with "
                       "an 'image' file field, application/json with a base64 'image', or an image/* body")
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


__all__ = ["create_app", "read_upload"]
