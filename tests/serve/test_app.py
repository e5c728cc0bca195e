"""The HTTP service as a client sees it: predictions, bad input, thumbnails, health, metrics."""

import base64
import json
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from ravis.serve import create_app, is_loopback
from ravis.serve.prometheus import parse_histogram_means

from serve_helpers import Client, multipart, png_bytes, start_server


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height (a decompression bomb's shape)."""
    raw = png_bytes(Image.new("L", (1, 1)))
    ihdr = bytearray(raw[16:29])  # after the signature (8), length (4) and b"IHDR" (4)
    ihdr[0:4], ihdr[4:8] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    return raw[:16] + bytes(ihdr) + zlib.crc32(b"IHDR" + bytes(ihdr)).to_bytes(4, "big") + raw[33:]


def test_predict_multipart_json_and_raw_agree(served, query_png):
    client, predictor = served
    r = client.post_file(query_png)
    assert r.status == 200, r.body
    out = r.json()
    direct = predictor.predict([Image.open(__import__("io").BytesIO(query_png)).convert("RGB")])[0]
    assert out["prediction"] == direct["prediction"]
    assert [n["memory_id"] for n in out["neighbors"]] == [n["memory_id"] for n in direct["neighbors"]]
    assert len(out["neighbors"]) == predictor.k
    assert set(out["timings_ms"]) == {"decode", "queue", "encode", "search", "fuse"}
    assert out["image"] == {"name": "query.png", "bytes": len(query_png), "width": 28, "height": 28}
    body = json.dumps({"image": base64.b64encode(query_png).decode(), "name": "q.png"}).encode()
    js = client.request("POST", "/predict", body, "application/json").json()
    raw = client.request("POST", "/predict", query_png, "image/png").json()
    for other in (js, raw):
        assert other["top5"] == out["top5"]


BAD = [  # (name, request kwargs, status, kind)
    ("not an image", dict(body=b"hello, not an image", ctype="image/png"), 400, "not_an_image"),
    ("empty", dict(body=b"", ctype="image/png"), 400, "empty_upload"),
    ("wrong content type", dict(body=b"hello", ctype="text/plain"), 415, "unsupported_media_type"),
    ("no content type", dict(body=b"hello", ctype=None), 415, "unsupported_media_type"),
    ("bad json", dict(body=b"{not json", ctype="application/json"), 400, "bad_json"),
    ("json without image", dict(body=b'{"img": "x"}', ctype="application/json"), 400, "missing_image"),
    ("bad base64", dict(body=b'{"image": "%%%%"}', ctype="application/json"), 400, "bad_base64"),
    ("bomb under PIL's limit", dict(body=bomb_png(8000, 8000), ctype="image/png"), 413, "too_many_pixels"),
    ("bomb over PIL's limit", dict(body=bomb_png(30000, 30000), ctype="image/png"), 413, "too_many_pixels"),
]


@pytest.mark.parametrize("name,req,status,kind", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_4xx(served, name, req, status, kind):
    client, _ = served
    r = client.request("POST", "/predict", req["body"], req["ctype"])
    assert r.status == status, r.body
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["kind"] == kind and error["status"] == status and error["message"]


def test_no_body_says_what_to_send(served):
    client, _ = served
    r = client.request("POST", "/predict")  # no Content-Type, no body
    error = r.json()["error"]
    assert r.status == 400 and error["kind"] == "missing_image", r.body
    assert "multipart/form-data" in error["message"] and "image/*" in error["message"]


def test_a_huge_image_is_refused_naming_the_servers_limit(served):
    client, _ = served
    r = client.request("POST", "/predict", bomb_png(20000, 20000), "image/png")  # past PIL's own limit
    error = r.json()["error"]
    assert r.status == 413 and error["kind"] == "too_many_pixels", r.body
    assert "this server's limit of 40,000,000 pixels (--max-pixels)" in error["message"]
    assert "DOS attack" not in error["message"]  # not PIL's text


@pytest.mark.parametrize("method, path", [("POST", "/predict"), ("GET", "/healthz"), ("GET", "/samples"),
                                          ("GET", "/samples/0"), ("GET", "/memory/rows/0/thumbnail")])
def test_an_unknown_experiment_is_refused_listing_the_runs(served, query_png, method, path):
    client, _ = served
    body, ctype = (query_png, "image/png") if method == "POST" else (None, None)
    r = client.request(method, f"{path}?experiment=nope", body, ctype)
    error = r.json()["error"]
    assert r.status == 404 and error["kind"] == "unknown_experiment", r.body
    assert "no experiment 'nope'; it has ['tiny-fmnist']" in error["message"]


def test_truncated_and_oversized_uploads(served, query_png):
    client, _ = served
    r = client.post_file(query_png[: len(query_png) // 2], "half.png")
    assert r.status == 400 and r.json()["error"]["kind"] == "truncated_image"
    assert "half.png" in r.json()["error"]["message"]
    big = np.random.default_rng(0).integers(0, 256, 11 * 1024 * 1024, dtype=np.uint8).tobytes()
    r = client.post_file(big, "big.png")  # default limit 10 MB
    assert r.status == 413 and r.json()["error"]["kind"] == "upload_too_large"
    r = client.request("POST", "/predict", json.dumps({"image": base64.b64encode(big).decode()}).encode(),
                       "application/json")
    assert r.status == 413
    r = client.post_file(query_png, "q.txt", part_type="text/plain")
    assert r.status == 415 and "text/plain" in r.json()["error"]["message"]
    body, ctype = multipart(query_png, "q.png", "image/png", field="other")
    r = client.request("POST", "/predict", body, ctype)
    assert r.status == 400 and r.json()["error"]["kind"] == "missing_image"


def test_configurable_size_limit(tiny_run, served, query_png):
    _, predictor = served
    server, thread, base = start_server(create_app(predictor, max_bytes=100))
    try:
        r = Client(base).post_file(query_png)
        assert r.status == 413 and "100 bytes" in r.json()["error"]["message"]
    finally:
        server.should_exit = True
        thread.join(10)


def test_burst_of_bad_requests_then_a_good_one(served, query_png):
    client, _ = served
    errors = []

    def hammer(i):
        for name, req, status, _ in BAD[i::4]:
            r = client.request("POST", "/predict", req["body"], req["ctype"])
            if r.status != status:
                errors.append((name, r.status))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for _ in range(3):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    assert not errors
    r = client.post_file(query_png)
    assert r.status == 200 and r.json()["neighbors"]
    assert client.get("/healthz").json()["status"] == "ok"


def test_thumbnails_come_from_the_memory_only(served, query_png):
    client, predictor = served
    n = client.post_file(query_png).json()["neighbors"][0]
    assert n["thumbnail"] == f"/memory/rows/{n['row']}/thumbnail?experiment=tiny-fmnist"
    r = client.get(n["thumbnail"])
    assert r.status == 200 and r.headers["content-type"] == "image/png"
    assert r.body == predictor.memory.meta_at([n["row"]], ["thumbnail"])["thumbnail"][0]
    for path in ["/memory/..%2F..%2F..%2Fetc%2Fpasswd/thumbnail", "/memory/%2Fetc%2Fpasswd/thumbnail",
                 "/memory/../../etc/passwd/thumbnail", "/memory/rows/nope/thumbnail",
                 "/static/..%2Fapp.py", "/static/app.py", f"/memory/rows/{len(predictor.memory)}/thumbnail",
                 "/memory/rows/-1/thumbnail"]:
        r = client.get(path)
        assert r.status in (400, 404), path
        assert b"root:" not in r.body and b"import" not in r.body
        assert r.json()["error"]["kind"] in ("unknown_memory_row", "not_found", "bad_request")


def test_page_is_offline_and_served(served):
    client, _ = served
    page = client.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status == 200
        assert b"http://" not in r.body and b"https://" not in r.body
    assert b"http://" not in page.body and b"https://" not in page.body  # no CDN: the machine is offline
    assert client.get("/docs").status == 404  # FastAPI's docs page would load from a CDN


def test_healthz_and_metrics_agree_with_the_responses(served, query_png):
    _, predictor = served
    server, thread, base = start_server(create_app(predictor))
    client = Client(base)
    try:
        timings = [client.post_file(query_png).json()["timings_ms"] for _ in range(5)]
        client.request("POST", "/predict", b"junk", "image/png")
        health = client.get("/healthz").json()
        assert health["memory_size"] == len(predictor.memory) and health["k"] == predictor.k
        text = client.get("/metrics").body.decode()
    finally:
        server.should_exit = True
        thread.join(10)
    means = parse_histogram_means(text)
    for stage in ("decode", "queue", "encode", "search", "fuse"):
        count, mean = means[stage]
        assert count == 5
        assert mean * 1e3 == pytest.approx(np.mean([t[stage] for t in timings]), rel=1e-6, abs=1e-6)
    assert 'ravis_errors_total{kind="not_an_image"} 1.0' in text
    assert 'ravis_requests_total{endpoint="/predict",status="200"} 5.0' in text
    assert 'ravis_request_seconds_count{endpoint="/predict"} 6.0' in text
    assert f"ravis_memory_entries {float(len(predictor.memory))}" in text


def test_binds_to_loopback_by_default():
    from ravis.cli import build_parser

    args = build_parser().parse_args(["serve", "some-run"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.max_upload_mb == 10
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_serve_verb_binds_loopback_and_tunes_threads(tiny_run, monkeypatch, capsys):
    """``ravis serve RUN`` builds the app and hands it to uvicorn on 127.0.0.1:8000."""
    import faiss
    import torch
    import uvicorn

    from ravis.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        assert main(["serve", str(tiny_run), "--max-upload-mb", "2", "--search-param", "oops"]) == 2
        assert "KEY=VALUE" in capsys.readouterr().err
        assert main(["serve", str(tiny_run), "--max-upload-mb", "2"]) == 0
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])
    (app, kw), = calls
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8000
    assert {r.path for r in app.routes} >= {"/predict", "/", "/healthz", "/metrics", "/memory/rows/{row}/thumbnail"}
    assert "http://127.0.0.1:8000/" in capsys.readouterr().out


def _kind(reply) -> tuple[int, str]:
    return reply.status, reply.json()["error"]["kind"]


def test_every_remaining_error_kind(served, query_png):
    """The kinds no other test reaches, each with its status (the README lists them all)."""
    client, _ = served
    part = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + query_png + b"\r\n")
    three = part * 3 + b"--b--\r\n"  # more files than a prediction takes
    assert _kind(client.request("POST", "/predict", three, "multipart/form-data; boundary=b")) == (400, "bad_multipart")
    bad_label = json.dumps({"image": base64.b64encode(query_png).decode(), "label": 3}).encode()
    assert _kind(client.request("POST", "/predict", bad_label, "application/json")) == (400, "bad_field")
    assert _kind(client.get("/healthz?method=nope")) == (404, "unknown_model")
    assert _kind(client.get("/samples/99")) == (404, "unknown_sample")
    assert _kind(client.request("DELETE", "/healthz")) == (405, "method_not_allowed")
    assert _kind(client.get("/samples/x")) == (400, "bad_request")
    assert _kind(client.get("/no/such/route")) == (404, "not_found")


def test_samples_are_full_resolution_test_images_with_the_evaluated_prediction(served, tiny_run):
    client, predictor = served
    listed = client.get("/samples").json()
    assert listed["note"] is None and len(listed["samples"]) == 8
    ids = json.loads((tiny_run / "tiny-fmnist" / "test_ids.json").read_text())
    with np.load(tiny_run / "tiny-fmnist" / "predictions.npz") as f:
        labels, logits = f["labels"], f["logits_mam"]
    for s in listed["samples"]:
        assert ids[s["row"]] == s["id"] and s["label"] == predictor.class_names[labels[s["row"]]]
        assert s["evaluated"]["prediction"] == predictor.class_names[int(logits[s["row"]].argmax())]
        image = client.get(s["url"])
        assert image.status == 200 and image.headers["content-type"] == "image/png"
        out = client.post_file(image.body, "sample.png").json()
        assert out["prediction"] == s["evaluated"]["prediction"]
        assert out["top5"][0]["probability"] == pytest.approx(s["evaluated"]["probability"], abs=1e-4)
