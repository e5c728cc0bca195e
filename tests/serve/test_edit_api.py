"""The server's edit endpoints: authorisation (edits disabled, no token, wrong token), adds,
deletes and relabels that the next prediction sees, bad edits that change nothing, and
eight clients predicting while edits arrive."""

import json
import re
import shutil
import threading

import pytest
from serve_helpers import Client, png_bytes, start_server

import ravis
from ravis.data import load_fashion_mnist
from ravis.serve import create_app

TOKEN = "a-test-token-of-32-characters-xx"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    predictor = ravis.load(run)
    srv, thread, base = start_server(create_app(predictor, edit_token=TOKEN))
    yield Client(base), predictor
    srv.should_exit = True
    thread.join(10)


def query(i=0):
    return load_fashion_mnist().test.load_image(i)


def form(image_bytes: bytes, **fields) -> tuple[bytes, str]:
    boundary = "ravis-edit-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append((f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
                  f"Content-Type: image/png\r\n\r\n").encode() + image_bytes + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def add(client, image, headers=AUTH, **fields):
    body, ctype = form(png_bytes(image), **fields)
    return client.request("POST", "/memory", body, ctype, headers)


def predict(client, image):
    body, ctype = form(png_bytes(image))
    return client.request("POST", "/predict", body, ctype).json()


def metric(client, op, outcome) -> float:
    text = client.get("/metrics").body.decode()
    m = re.search(rf'ravis_edits_total{{op="{op}",outcome="{outcome}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_edits_are_off_without_a_token(tiny_run):
    predictor = ravis.load(tiny_run)
    srv, thread, base = start_server(create_app(predictor))
    try:
        client = Client(base)
        r = add(client, query(), label="T-shirt/top")
        assert r.status == 403 and r.json()["error"]["kind"] == "edits_disabled"
        assert client.request("DELETE", "/memory/x", headers=AUTH).status == 403
        assert metric(client, "add", "refused") == 1 and metric(client, "delete", "refused") == 1
        assert client.get("/healthz").json()["edits_allowed"] is False
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("headers, status, kind", [
    ({}, 401, "missing_token"),
    ({"Authorization": "Basic abc"}, 401, "missing_token"),
    ({"Authorization": "Bearer wrong-token"}, 403, "wrong_token"),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, 403, "wrong_token"),
])
def test_an_edit_needs_the_right_token(server, headers, status, kind):
    client, predictor = server
    seq = predictor.memory.seq
    r = add(client, query(), headers=headers, label="T-shirt/top")
    assert (r.status, r.json()["error"]["kind"]) == (status, kind)
    r = client.request("POST", "/memory/relabel", json.dumps({"id": "x", "label": "y"}).encode(),
                       "application/json", headers)
    assert r.status == status
    assert predictor.memory.seq == seq and metric(client, "add", "refused") == 1


def test_add_then_delete_through_the_api(server):
    client, predictor = server
    image = query(3)
    before = predict(client, image)
    r = add(client, image, label="a new class", caption="my own picture")
    assert r.status == 200, r.body
    added = r.json()["added"]
    assert added["label"] == "a new class" and added["text"] == "my own picture"
    after = predict(client, image)
    top = after["neighbors"][0]
    assert top["memory_id"] == added["id"] and top["similarity"] > 0.999 and top["text"] == "my own picture"
    assert client.get(f"/memory/rows/{added['row']}/thumbnail").status == 200
    r = client.request("DELETE", f"/memory/{added['id']}", headers=AUTH)
    assert r.status == 200 and r.json()["deleted"] == [added["id"]]
    again = predict(client, image)
    assert [n["memory_id"] for n in again["neighbors"]] == [n["memory_id"] for n in before["neighbors"]]
    assert client.get(f"/memory/rows/{added['row']}/thumbnail").status == 404
    assert metric(client, "add", "accepted") == 1 and metric(client, "delete", "accepted") == 1
    assert client.get("/healthz").json()["memory_size"] == predictor.memory.live_count


def test_relabel_through_the_api(server):
    client, predictor = server
    entry = predictor.memory.meta_at([0], ["id"])["id"][0]
    r = client.request("POST", "/memory/relabel", json.dumps({"id": entry, "label": "Bag"}).encode(),
                       "application/json", AUTH)
    assert r.status == 200 and r.json()["relabelled"] == {entry: "Bag"}
    assert predictor.memory.labels_at([0])[0] == predictor.class_names.index("Bag")


@pytest.mark.parametrize("make, status, kind", [
    (lambda c: c.request("POST", "/memory", *form(b"not an image", label="Bag"), AUTH), 400, "not_an_image"),
    (lambda c: add(c, query()), 400, "bad_edit"),  # neither label nor caption
    (lambda c: c.request("DELETE", "/memory/no/such/id", headers=AUTH), 404, "unknown_entry"),
    (lambda c: c.request("POST", "/memory/relabel", b'{"id": "x"}', "application/json", AUTH), 400, "bad_edit"),
    (lambda c: c.request("POST", "/memory/relabel", b"{not json", "application/json", AUTH), 400, "bad_json"),
    (lambda c: c.request("POST", "/memory", *form(b"\x89PNG" + b"0" * (11 * 1024 * 1024), label="Bag"), AUTH),
     413, "upload_too_large"),
])
def test_a_bad_edit_is_a_4xx_and_changes_nothing(server, make, status, kind):
    client, predictor = server
    seq, live = predictor.memory.seq, predictor.memory.live_count
    r = make(client)
    assert (r.status, r.json()["error"]["kind"]) == (status, kind), r.body
    assert (predictor.memory.seq, predictor.memory.live_count) == (seq, live)


def test_an_unknown_class_for_a_relabel_is_refused(server):
    client, predictor = server
    entry = predictor.memory.meta_at([0], ["id"])["id"][0]
    r = client.request("POST", "/memory/relabel", json.dumps({"id": entry, "label": "Zebra"}).encode(),
                       "application/json", AUTH)
    assert r.status == 400 and "unknown class" in r.json()["error"]["message"]


def test_predictions_while_edits_arrive_see_one_memory_state(server):
    """Eight clients predict one image while its copy is added and deleted again and again:
    every response is the one before the add or the one after it, never a mix."""
    client, predictor = server
    image = query(5)
    without = [n["memory_id"] for n in predict(client, image)["neighbors"]]
    errors, seen = [], []
    stop = threading.Event()

    def predictor_client():
        c = Client(client.base)
        while not stop.is_set():
            body, ctype = form(png_bytes(image))
            r = c.request("POST", "/predict", body, ctype)
            if r.status != 200:
                errors.append(r.status)
                continue
            seen.append([n["memory_id"] for n in r.json()["neighbors"]])

    threads = [threading.Thread(target=predictor_client) for _ in range(8)]
    for t in threads:
        t.start()
    withs = []
    try:
        for i in range(6):  # a bounded loop of edits
            r = add(client, image, label="Bag")
            assert r.status == 200, r.body
            new_id = r.json()["added"]["id"]
            withs.append([new_id] + without[:-1])  # the copy first, the farthest one pushed out
            assert client.request("DELETE", f"/memory/{new_id}", headers=AUTH).status == 200
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors and len(seen) > 8
    assert all(s == without or s in withs for s in seen)
