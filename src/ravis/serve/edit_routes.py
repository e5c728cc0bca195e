"""Editing the served memory over HTTP, without retraining.

    POST   /memory           an image (multipart field "image", JSON base64, or a raw image/*)
                             with a "label" and/or "caption": added, returns its id
    DELETE /memory/{id}      the entry is deleted (exact unlearning: see ravis.memory.edited_view)
    POST   /memory/relabel   JSON {"id": ..., "label": ...} or {"changes": {id: label, ...}}

Off unless the server was started with an edit token (``ravis serve --allow-edits
--edit-token-file FILE``); then each edit needs ``Authorization: Bearer <token>``, compared in
constant time. Every accepted or refused edit is logged and counted
(``ravis_edits_total{op, outcome}``). An edit runs under the model's lock, so a prediction
sees the memory as it was before or after it, never half of it. A bad edit (not an image, an
unknown id or class, an oversized upload) is a 4xx JSON error and changes nothing; no part
of a request names a file: records go to the run's edit log only.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..editor import MemoryEditor
from ..memory.edited_view import EditError
from .uploads import ApiError, image_from_upload, json_object, read_upload

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 1024 * 1024  # a relabel body: ids and class names


class _Editing:
    """The edit endpoints' shared steps: authorisation, the one editor per experiment (its
    encoders load once), and applying an edit under the model lock."""

    def __init__(self, service):
        self.service = service
        self.editors: dict[str, MemoryEditor] = {}

    def editor_of(self, predictor) -> MemoryEditor:
        name = predictor.experiment.name
        if name not in self.editors:
            self.editors[name] = MemoryEditor.for_predictor(predictor)
        return self.editors[name]

    def refused(self, op: str, request: Request, error: ApiError) -> ApiError:
        self.service.metrics.edits.labels(op, "refused").inc()
        log.warning("edit refused: %s from %s: %s", op, _client(request), error.message)
        return error

    def authorise(self, op: str, request: Request) -> None:
        token = self.service.edit_token
        if token is None:
            raise self.refused(op, request, ApiError(
                403, "edits_disabled", "editing is off on this server: start it with "
                "`ravis serve RUN --allow-edits --edit-token-file FILE`"))
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise self.refused(op, request, ApiError(401, "missing_token",
                                                     "edits need the header Authorization: Bearer <token>"))
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise self.refused(op, request, ApiError(403, "wrong_token", "the edit token is wrong"))

    def apply(self, op: str, request: Request, edit) -> dict:
        """Runs ``edit(predictor, editor)`` on the model the request names, under the model
        lock; an EditError becomes a 4xx, nothing changed."""
        predictor = self.service.chosen(request)
        with self.service.model_lock:
            try:
                result = edit(predictor, self.editor_of(predictor))
            except EditError as e:
                unknown = str(e).startswith("no live memory entry")
                raise self.refused(op, request, ApiError(404 if unknown else 400,
                                                         "unknown_entry" if unknown else "bad_edit",
                                                         str(e))) from None
            live = predictor.memory.live_count
        self.service.metrics.edits.labels(op, "accepted").inc()
        if predictor is self.service.models.default:
            self.service.metrics.memory_entries.set(live)
        log.info("edit accepted: %s from %s (memory: %d live entries)", op, _client(request), live)
        return result


def add_edit_routes(app, service) -> None:
    """Installs the edit endpoints on ``app`` for ``service`` (a
    :class:`ravis.serve.app.Service`: every edit is refused where its ``edit_token`` is None);
    a request's ``?experiment=`` names the model whose memory is edited."""
    editing = _Editing(service)
    _add_route(app, service, editing)
    _delete_and_relabel_routes(app, editing)


def _add_route(app, service, editing: _Editing) -> None:
    @app.post("/memory")
    async def add_entry(request: Request):
        editing.authorise("add", request)
        try:
            data, name, fields = await read_upload(request, service.max_bytes)
            image = image_from_upload(data, name, service.max_pixels)
        except ApiError as e:
            raise editing.refused("add", request, e) from None
        label, caption = fields.get("label") or None, fields.get("caption") or None
        if label is None and caption is None:
            raise editing.refused("add", request, ApiError(400, "bad_edit",
                                                           'an added entry needs a "label" or a "caption"'))

        def edit(predictor, editor):
            (record,) = editor.add([image], [name], label=label, caption=caption, who=_client(request))
            return {"added": {"id": record["id"], "label": record["label"], "text": record["text"],
                              "row": int(predictor.memory.rows_of([record["id"]])[0])},
                    "memory": _status(predictor)}

        return await run_in_threadpool(editing.apply, "add", request, edit)

    @app.get("/memory/{rest:path}")
    def no_such_memory_path(rest: str):
        # ids hold "/", so DELETE /memory/{id} takes any path; other GETs under /memory are 404s
        # (not 405s: there is nothing to GET there but thumbnails)
        raise ApiError(404, "not_found", f"GET /memory/{rest[:100]}: no such resource")


def _delete_and_relabel_routes(app, editing: _Editing) -> None:
    @app.delete("/memory/{entry_id:path}")
    def delete_entry(entry_id: str, request: Request):
        editing.authorise("delete", request)
        return editing.apply("delete", request, lambda predictor, editor: {
            "deleted": editor.delete([entry_id], who=_client(request))["ids"],
            "memory": _status(predictor)})

    @app.post("/memory/relabel")
    async def relabel(request: Request):
        editing.authorise("relabel", request)
        try:
            changes = _relabel_changes(await _read_capped(request))
        except ApiError as e:
            raise editing.refused("relabel", request, e) from None

        def edit(predictor, editor):
            record = editor.relabel(changes, who=_client(request))
            return {"relabelled": {c[0]: c[1] for c in record["changes"]}, "memory": _status(predictor)}

        return await run_in_threadpool(editing.apply, "relabel", request, edit)


def _relabel_changes(body: bytes) -> dict[str, str]:
    """{id: label} of a relabel request: ``{"id": ..., "label": ...}`` or ``{"changes": {...}}``."""
    obj = json_object(body)
    changes = obj.get("changes") if "changes" in obj else {obj.get("id"): obj.get("label")}
    if not (isinstance(changes, dict) and changes and all(
            isinstance(k, str) and isinstance(v, str) for k, v in changes.items())):
        raise ApiError(400, "bad_edit", 'send {"id": ..., "label": ...} or {"changes": {id: label}}')
    return changes


def _status(predictor) -> dict:
    return {"entries": predictor.memory.live_count, "edits": predictor.memory.seq}


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _read_capped(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ApiError(413, "upload_too_large", f"the body exceeds {MAX_JSON_BYTES} bytes")
    return bytes(body)


__all__ = ["add_edit_routes"]
