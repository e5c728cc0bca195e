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
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..predictor import Predictor
from ..thumbnails import media_type
from . import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from .edit_routes import add_edit_routes
from .models import ServedModels
from .prometheus import ServerMetrics
from .uploads import ApiError, image_from_upload, read_upload

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: requests pick among these names, never a path."""
    return {p.name: (p.read_bytes(), STATIC_TYPES[p.suffix]) for p in STATIC_DIR.iterdir()
            if p.suffix in STATIC_TYPES}


@dataclass
class Service:
    """What the routes share: the started model and the run's others, the limits on a
    request, the metrics, the edit token (None: edits refused), and the lock that runs one
    model call (or edit) at a time."""

    predictor: Predictor
    models: ServedModels
    metrics: ServerMetrics
    max_bytes: int
    max_pixels: int
    edit_token: str | None = None
    model_lock: threading.Lock = field(default_factory=threading.Lock)

    def chosen(self, request: Request) -> Predictor:
        """The model a request names (``?experiment=&method=``; default: the started one)."""
        q = request.query_params
        experiment = q.get("experiment") or None
        self.models.require_experiment(experiment)
        return self.models.get(experiment, q.get("method") or None)


def create_app(predictor: Predictor, *, max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, edit_token: str | None = None,
               models: ServedModels | None = None) -> FastAPI:
    """A FastAPI app serving ``predictor`` and, with ``models``, the run's other experiments
    and methods (``?experiment=&method=``); with ``edit_token``, memories can be edited by
    requests that carry it (:mod:`.edit_routes`)."""
    # No /docs: FastAPI's docs page loads its scripts from a CDN, and this runs offline.
    app = FastAPI(title="ravis", docs_url=None, redoc_url=None, openapi_url=None)
    service = Service(predictor, models or ServedModels(predictor, predictor.run_dir),
                      ServerMetrics(predictor.memory.live_count), max_bytes, max_pixels, edit_token)
    app.state.predictor, app.state.metrics = predictor, service.metrics
    _observe(app, service.metrics)
    _error_handlers(app, service.metrics)
    _prediction_routes(app, service)
    add_edit_routes(app, service)
    _status_routes(app, service)
    _page_routes(app)
    return app


def _observe(app: FastAPI, metrics: ServerMetrics) -> None:
    """Counts every request by route and status, and times it."""
    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        endpoint = getattr(request.scope.get("route"), "path", "unmatched")  # no route: unmatched
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response


def _error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    """Every refusal as ``{"error": {kind, message, status}}``, counted by kind."""
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


def _predict_bytes(service: Service, p: Predictor, data: bytes, name: str) -> dict:
    """What ``POST /predict`` answers for one uploaded image, with each stage's time."""
    t0 = time.perf_counter()
    image = image_from_upload(data, name, service.max_pixels)
    t1 = time.perf_counter()
    with service.model_lock:
        t2 = time.perf_counter()
        out = p.predict([image])[0]
    stages = {"decode": t1 - t0, "queue": t2 - t1, **{k: v / 1e3 for k, v in out["timings_ms"].items()}}
    service.metrics.observe_stages(stages)
    out["timings_ms"] = {k: 1e3 * v for k, v in stages.items()}
    out["image"] = {"name": name, "bytes": len(data), "width": image.width, "height": image.height}
    where = urlencode({"experiment": p.experiment.name})
    for n in out["neighbors"]:
        n["thumbnail"] = f"/memory/rows/{n['row']}/thumbnail?{where}" if n["has_thumbnail"] else None
    return out


def _prediction_routes(app: FastAPI, service: Service) -> None:
    """``POST /predict``, the models and sample images to choose from, memory thumbnails."""
    default = service.predictor

    @app.post("/predict")
    async def predict(request: Request):
        p = await run_in_threadpool(service.chosen, request)  # a first use loads the model
        data, name, _ = await read_upload(request, service.max_bytes)
        return JSONResponse(await run_in_threadpool(_predict_bytes, service, p, data, name))

    @app.get("/models")
    def list_models():
        return {"default": {"experiment": default.experiment.name, "method": default.method,
                            "label": default.method_label},
                "models": service.models.choices()}

    @app.get("/samples")
    def samples(request: Request):
        q = request.query_params
        service.models.require_experiment(q.get("experiment") or None)
        name, method = q.get("experiment") or default.experiment.name, q.get("method") or None
        where = urlencode({"experiment": name})
        found = service.models.samples(name, method)
        return {"experiment": name, "note": None if found else service.models.samples_note(name),
                "samples": [{"id": x["id"], "row": x["row"], "label": x["label"], "evaluated": x["evaluated"],
                             "url": f"/samples/{j}?{where}"} for j, x in enumerate(found)]}

    @app.get("/samples/{index}")
    def sample(index: int, request: Request):
        service.models.require_experiment(request.query_params.get("experiment") or None)
        found = service.models.sample_images(request.query_params.get("experiment") or None)
        if not 0 <= index < len(found):
            raise ApiError(404, "unknown_sample", f"no sample {index}; GET /samples lists {len(found)}")
        data = found[index]["image"]
        return Response(data, media_type=media_type(data), headers={"Cache-Control": "max-age=86400"})

    @app.get("/memory/rows/{row}/thumbnail")
    def thumbnail(row: int, request: Request):
        found = service.chosen(request).thumbnail(row)  # read from the memory's metadata, never a path
        if found is None:
            raise ApiError(404, "unknown_memory_row", f"no thumbnail for memory row {row}")
        data, mime = found
        return Response(data, media_type=mime, headers={"Cache-Control": "max-age=86400"})


def _status_routes(app: FastAPI, service: Service) -> None:
    """``GET /healthz`` and the Prometheus ``GET /metrics``."""
    @app.get("/healthz")
    def healthz(request: Request):
        p = service.chosen(request)  # the started model, or the one ?experiment=&method= names
        return {"status": "ok", "experiment": p.experiment.name, "method": p.method,
                "method_label": p.method_label, "kept": p.kept, "calibrated": p.calibrated,
                "memory_size": p.memory.live_count, "edits_allowed": service.edit_token is not None,
                "k": p.k, "classes": len(p.all_class_names), "max_upload_bytes": service.max_bytes,
                "max_pixels": service.max_pixels}

    @app.get("/metrics")
    def prometheus():
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)


def _page_routes(app: FastAPI) -> None:
    """The page at ``/`` and its static files, read once: requests pick among these names,
    never a path."""
    static = _static_files()

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


__all__ = ["Service", "create_app"]
