"""Editing a served memory: how long an edit takes to take effect, and what a stream of
edits costs the predictions, at 10^4 and 10^6 entries.

For each size: a float16 sharded memory of clustered unit keys (1280-d, 384-d values, ten
classes) and its index (exact at 10^4; ``IVF1024,SQ8`` tuned to 0.95 recall at 10^6),
served as ``ravis serve --allow-edits`` serves a run: the app of ``ravis.serve`` on a uvicorn
thread on 127.0.0.1, over :class:`ravis.memory.edited_view.EditedMemory` and
:class:`~ravis.index.edited_index.EditedIndex`, EfficientNet-Lite0 and MiniLM as the encoders, a MAM
with label evidence, k = 100. Clients send Fashion-MNIST test images over HTTP.

latency  ``--edits`` of each kind, one at a time, through the API: add one entry (an image
         and a label: encoded, embedded, logged, applied), delete one, relabel one; p50 /
         p95 ms of the round trip, and of the memory's own part (``memory.edit``: record
         written and fsynced, edit applied) measured in process. The first edits load the
         text encoder and build the id lookup (once per server) and are timed apart. An
         added entry is checked to come back as the first neighbour of its own image at the
         next /predict. Goal: an edit takes effect in under 50 ms at 10^6.
qps      /predict requests per second from one client for ``--seconds``, without edits and
         with another client adding and deleting an entry every ``--edit-every`` ms,
         alternating, ``--repeats`` times each, in the same server; the ratio with / without.

    python benchmarks/bench_edits.py --rows 10000,1000000 --work /tmp/bench-edits \
        --out benchmarks/results/edits.json
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

D, DV, CLASSES, CLUSTERS = 1280, 384, 10, 1000


def make_memory(memdir: Path, rows: int, shard_rows: int = 250_000) -> None:
    """Unit keys around CLUSTERS random centres (an index has structure to find), labels by
    centre, random values; float16, in the on-disk format."""
    from ravis.memory.sharded import FORMAT, meta_table, save_manifest, write_shard

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, D)).astype(np.float32)
    shards = []
    for i, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        c = rng.integers(0, CLUSTERS, n)
        keys = centres[c] + 0.6 * rng.standard_normal((n, D), dtype=np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        values = rng.standard_normal((n, DV), dtype=np.float32)
        meta = meta_table([f"r{start + j}" for j in range(n)], ["x"] * n, ["bench"] * n,
                          (c % CLASSES).tolist(), [b""] * n, [None] * n)
        name = f"{i:05d}"
        files = write_shard(memdir, name, keys.astype("float16"), values.astype("float16"), meta)
        shards.append({"name": name, "input": f"clustered[{start}:{start + n}]", "rows": n,
                       "skipped": {}, "files": files})
    save_manifest(memdir, {"format": FORMAT, "key_encoder": "bench", "value_encoder": "bench",
                           "dim": D, "value_dim": DV, "dtype": "float16", "count": rows,
                           "class_names": [f"c{j}" for j in range(CLASSES)], "skipped": {},
                           "sources": [], "shards": shards, "failed_shards": []})


TOKEN = "bench-edit-token-0123456789abcdef"


def served(work: Path, rows: int):
    """A Predictor over an edited memory of ``rows`` entries (a fresh edit log each time)."""
    from ravis.config import ExperimentConfig, MemoryConfig, RetrievalConfig, RunConfig
    from ravis.encoders import create_image_encoder
    from ravis.fusion import build_model
    from ravis.memory.edited_view import EditedIndex, EditedMemory
    from ravis.memory.indexing import has_index, index_memory
    from ravis.memory.sharded import ShardedMemory
    from ravis.predictor import Predictor
    from ravis.memory.indexing import memory_index

    memdir = work / f"memory-{rows}"
    if not (memdir / "manifest.json").exists():
        print(f"making a {rows}-row memory ...", flush=True)
        make_memory(memdir, rows)
    if rows > 100_000 and not has_index(memdir):
        print("building its IVF1024,SQ8 index ...", flush=True)
        index_memory(memdir, factory="IVF1024,SQ8", k=100, progress=False)
    log = work / f"edits-{rows}.log"
    log.unlink(missing_ok=True)
    base = ShardedMemory.open(memdir, verify=True)
    memory = EditedMemory(base, log)
    exp = ExperimentConfig(name="bench", memory=MemoryConfig(values="label_prompt"))
    index = EditedIndex(memory_index(base, RetrievalConfig(budget="8G"), work / "cache"), memory)
    model = build_model("mam", exp, D, DV, CLASSES, label_k=10)
    model.eval()
    return Predictor(RunConfig(experiments=[exp]), exp, "mam", create_image_encoder("efficientnet_lite0"),
                     memory, index, model, [f"c{j}" for j in range(CLASSES)], 100)


class Client:
    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
             auth: bool = False) -> dict:
        import urllib.request

        headers = {"Content-Type": ctype} if ctype else {}
        if auth:
            headers["Authorization"] = f"Bearer {TOKEN}"
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def predict(self, png: bytes) -> dict:
        return self.call("POST", "/predict", *form(png))

    def add(self, png: bytes, label: str) -> dict:
        return self.call("POST", "/memory", *form(png, label=label), auth=True)

    def delete(self, entry: str) -> dict:
        return self.call("DELETE", f"/memory/{entry}", auth=True)

    def relabel(self, entry: str, label: str) -> dict:
        return self.call("POST", "/memory/relabel", json.dumps({"id": entry, "label": label}).encode(),
                         "application/json", auth=True)


def form(png: bytes, **fields) -> tuple[bytes, str]:
    b = "bench-boundary"
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n")
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def test_images(n: int = 64) -> list[bytes]:
    import io

    from ravis.data import load_fashion_mnist

    test = load_fashion_mnist().test
    out = []
    for i in range(n):
        buf = io.BytesIO()
        test.load_image(i).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def entry(rng, i: int) -> dict:
    key = rng.standard_normal(D).astype(np.float32)
    key /= np.linalg.norm(key)
    return {"id": f"added-{i}", "label": f"c{i % CLASSES}", "text": "an added entry", "source": "edits",
            "key": base64.b64encode(key.tobytes()).decode(),
            "value": base64.b64encode(rng.standard_normal(DV).astype(np.float32).tobytes()).decode(),
            "thumbnail": ""}


def ms(xs) -> dict:
    xs = sorted(1e3 * x for x in xs)
    return {"p50": round(statistics.median(xs), 2), "p95": round(xs[int(0.95 * (len(xs) - 1))], 2),
            "n": len(xs)}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def latency(p, client: Client, images: list[bytes], n: int, rng) -> dict:
    base = p.memory.base_count
    picks = rng.choice(np.arange(base), 2 * n + 2, replace=False)
    first = {"add": timed(lambda: client.add(images[0], "c1")),  # loads the text encoder
             "delete": timed(lambda: client.delete(f"r{picks[-1]}")),  # builds the id lookup
             "relabel": timed(lambda: client.relabel(f"r{picks[-2]}", "c2"))}
    out = {"first_edits_ms": {k: round(1e3 * v, 1) for k, v in first.items()}, "api_round_trip": {},
           "memory_edit": {}}
    added = []
    out["api_round_trip"]["add"] = ms([timed(lambda j=j: added.append(
        client.add(images[j % len(images)], f"c{j % CLASSES}")["added"]["id"])) for j in range(n)])
    out["api_round_trip"]["delete"] = ms([timed(lambda j=j: client.delete(f"r{picks[j]}")) for j in range(n)])
    out["api_round_trip"]["relabel"] = ms([timed(lambda j=j: client.relabel(f"r{picks[n + j]}", f"c{j % CLASSES}"))
                                           for j in range(n)])
    mem = p.memory  # the memory's own part of an edit, in process (no HTTP, no encoders)
    out["memory_edit"]["add"] = ms([timed(lambda j=j: mem.edit("add", who="bench", **entry(rng, j)))
                                    for j in range(n)])
    out["memory_edit"]["delete"] = ms([timed(lambda j=j: mem.edit("delete", who="bench", ids=[f"added-{j}"]))
                                       for j in range(n)])
    out["memory_edit"]["relabel"] = ms([timed(lambda j=j: mem.edit("relabel", who="bench", changes=[[added[j], "c0", None]],
                                                                   values={})) for j in range(n)])
    new = client.add(images[-1], "c9")["added"]["id"]
    out["added_entry_is_first_neighbour_at_next_predict"] = \
        client.predict(images[-1])["neighbors"][0]["memory_id"] == new
    return out


def qps(client: Client, images: list[bytes], seconds: float, edit_every: float | None) -> float:
    stop, done = threading.Event(), [0]

    def edits():
        editor = Client(client.base)
        while not stop.wait(edit_every / 1e3):
            editor.delete(editor.add(images[0], "c3")["added"]["id"])

    thread = threading.Thread(target=edits) if edit_every else None
    if thread:
        thread.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        client.predict(images[done[0] % len(images)])
        done[0] += 1
    elapsed = time.perf_counter() - t0
    stop.set()
    if thread:
        thread.join()
    return done[0] / elapsed


def start_server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="10000,1000000")
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--edit-every", type=float, default=100.0, help="ms between edits in the qps run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from ravis.serve import create_app
    from ravis.serve.threads import tune_for_latency

    images = test_images()
    results = {"dim": D, "value_dim": DV, "k": 100, "dtype": "float16", "sizes": {}}
    for rows in (int(r) for r in args.rows.split(",")):
        p = served(args.work, rows)
        tune_for_latency(p)
        server, thread, base = start_server(create_app(p, edit_token=TOKEN))
        client = Client(base)
        try:
            client.predict(images[0])  # warm-up
            res = {"index": p.index.spec,
                   "latency_ms": latency(p, client, images, args.edits, np.random.default_rng(0))}
            plain, edited = [], []
            for _ in range(args.repeats):  # alternating, so that drift hits both alike
                plain.append(qps(client, images, args.seconds, None))
                edited.append(qps(client, images, args.seconds, args.edit_every))
        finally:
            server.should_exit = True
            thread.join(10)
        res["predictions_per_second"] = {"without_edits": [round(x, 1) for x in plain],
                                         f"with_an_edit_every_{args.edit_every:g}_ms": [round(x, 1) for x in edited]}
        res["ratio_with_over_without"] = round(statistics.median(edited) / statistics.median(plain), 3)
        res["goal_edit_under_50ms_p95"] = all(res["latency_ms"]["api_round_trip"][op]["p95"] < 50
                                              for op in ("add", "delete", "relabel"))
        results["sizes"][str(rows)] = res
        print(json.dumps({rows: res}, indent=1), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
