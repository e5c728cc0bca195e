"""Editing a served memory: how long an edit takes to take effect, and what a stream of
edits costs the predictions, at 10^4 and 10^6 entries.

For each size: a float16 sharded memory of clustered unit keys (1280-d, 384-d values, ten
classes) and its index (exact at 10^4; ``IVF1024,SQ8`` tuned to 0.95 recall at 10^6), served
as ``ravis serve`` serves a run (:class:`ravis.memory.edits.EditedMemory` over it, the index
wrapped by :class:`~ravis.memory.edits.EditedIndex`, a MAM with label evidence, k = 100).

latency  ``--edits`` of each kind, one at a time: add one entry (key and value given: the
         encoders' time is the same as a prediction's ``encode`` stage), delete one, relabel
         one; p50 / p95 ms from the call to the memory answering with the edit applied (the
         record written and fsynced). The first edit by id builds the id lookup (once per
         process) and is timed apart. Goal: under 50 ms at 10^6.
qps      predictions per second (one query per call, as the server makes them) for
         ``--seconds``, without edits and with an edit every ``--edit-every`` ms on another
         thread, alternating, ``--repeats`` times each; the ratio with / without.

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


def served(work: Path, rows: int):
    """A Predictor over an edited memory of ``rows`` entries (a fresh edit log each time)."""
    from ravis.config import ExperimentConfig, RetrievalConfig, RunConfig
    from ravis.fusion import build_model
    from ravis.memory.edits import EditedIndex, EditedMemory
    from ravis.memory.indexing import has_index, index_memory
    from ravis.memory.sharded import ShardedMemory
    from ravis.predictor import Predictor
    from ravis.retrieval.memory_index import memory_index

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
    exp = ExperimentConfig(name="bench")
    index = EditedIndex(memory_index(base, RetrievalConfig(budget="8G"), work / "cache"), memory)
    model = build_model("mam", exp, D, DV, CLASSES, label_k=10)
    model.eval()
    return Predictor(RunConfig(experiments=[exp]), exp, "mam", None, memory, index, model,
                     [f"c{j}" for j in range(CLASSES)], 100)


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


def latency(p, n: int, rng) -> dict:
    memory = p.memory
    base = memory.base_count
    t0 = time.perf_counter()
    memory.edit("delete", who="bench", ids=["r0"])  # the first edit by id builds the lookup
    first = time.perf_counter() - t0
    picks = rng.choice(np.arange(1, base), 2 * n, replace=False)
    out = {"first_edit_by_id_ms": round(1e3 * first, 1)}
    for op in ("add", "delete", "relabel"):
        times = []
        for j in range(n):
            if op == "add":
                args = entry(rng, j)
            elif op == "delete":
                args = {"ids": [f"r{picks[j]}"]}
            else:
                args = {"changes": [[f"r{picks[n + j]}", f"c{j % CLASSES}", None]], "values": {}}
            t = time.perf_counter()
            memory.edit(op, who="bench", **args)
            times.append(time.perf_counter() - t)
        out[op] = ms(times)
    # an added entry is found by the very next search
    e = entry(rng, 10**6)
    memory.edit("add", who="bench", **e)
    key = np.frombuffer(base64.b64decode(e["key"]), np.float32)[None]
    out["added_entry_found_next_search"] = bool(p.index.search(key, 1)[1][0, 0] == len(memory) - 1)
    return out


def qps(p, seconds: float, edit_every: float | None, rng) -> float:
    xq = rng.standard_normal((256, D)).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    stop, done = threading.Event(), [0]

    def edits():
        j = 0
        while not stop.wait(edit_every / 1e3):
            p.memory.edit("add", who="bench", **entry(rng, 10**7 + j))
            p.memory.edit("delete", who="bench", ids=[f"added-{10**7 + j}"])
            j += 1

    editor = threading.Thread(target=edits) if edit_every else None
    if editor:
        editor.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p.predict_embeddings(xq[done[0] % 256][None], top_neighbors=10)
        done[0] += 1
    elapsed = time.perf_counter() - t0
    stop.set()
    if editor:
        editor.join()
    return done[0] / elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="10000,1000000")
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--edit-every", type=float, default=20.0, help="ms between edits in the qps run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"dim": D, "value_dim": DV, "k": 100, "dtype": "float16", "sizes": {}}
    for rows in (int(r) for r in args.rows.split(",")):
        p = served(args.work, rows)
        rng = np.random.default_rng(0)
        p.predict_embeddings(np.ones((1, D), np.float32) / np.sqrt(D))  # warm-up
        res = {"index": p.index.spec, "latency_ms": latency(p, args.edits, rng)}
        plain, edited = [], []
        for _ in range(args.repeats):  # alternating, so that drift hits both alike
            plain.append(qps(p, args.seconds, None, rng))
            edited.append(qps(p, args.seconds, args.edit_every, rng))
        res["predictions_per_second"] = {"without_edits": [round(x, 1) for x in plain],
                                         f"with_an_edit_every_{args.edit_every:g}_ms": [round(x, 1) for x in edited]}
        res["ratio_with_over_without"] = round(statistics.median(edited) / statistics.median(plain), 3)
        res["goal_edit_under_50ms"] = all(res["latency_ms"][op]["p95"] < 50 for op in ("add", "delete", "relabel"))
        results["sizes"][str(rows)] = res
        print(json.dumps({rows: res}, indent=1), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
