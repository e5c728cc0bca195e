"""Latency and throughput of ``POST /predict``, client side and per stage, with a real server.

The server (uvicorn, the app ``ravis serve`` runs) lives in a child process bound to
127.0.0.1; clients are threads in this process, each on its own keep-alive connection,
uploading real test images of the run (its test_thumbnails.parquet) as multipart.

latency: one client, then --concurrency clients, --requests each: p50/p95 of the client's
    round trip and of every stage the server reports (decode, queue, encode, search, fuse),
    and the ratio (search + fuse) / encode.
    --synthetic N swaps the run's memory for N entries (real keys of the run's memory plus
    noise, unit norm; values copied from the same entries) searched by a faiss IVF index
    (--factory, default IVF1024,Flat; --nprobe), and reports its recall@k against exact search over
    the same N entries. The goal: search + fuse under the encoder's time at N = 10^6.
load: --clients clients for --seconds seconds (bounded), counts errors, and compares the
    per-stage means in /metrics (the scrape delta over the run) with the client's numbers.

    python benchmarks/bench_serve.py latency --run demo-out --experiment fmnist-lt/B
    python benchmarks/bench_serve.py latency --run demo-out --experiment fmnist-lt/B --synthetic 1000000
    python benchmarks/bench_serve.py load --run demo-out --experiment fmnist-lt/B --clients 8 --seconds 60
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

STAGES = ("decode", "queue", "encode", "search", "fuse")
BOUNDARY = "ravis-bench-boundary"


# --- the synthetic memory --------------------------------------------------------------------

class IVFIndex:
    """The search call the Predictor makes, over a faiss IndexIVFFlat."""

    def __init__(self, index, nprobe: int):
        import faiss

        self.index = index
        faiss.extract_index_ivf(index).nprobe = nprobe
        self.ntotal = index.ntotal

    def search(self, xq, k):
        D, I = self.index.search(np.ascontiguousarray(xq, dtype=np.float32), k)
        return D, I.astype(np.int64)


def synthetic_paths(cache: Path, n: int, factory: str) -> dict:
    base = cache / f"synthetic-{n}"
    tag = factory.replace(",", "-")
    return {"dir": base, "keys": base / "keys.npy", "values": base / "values.npy", "rows": base / "rows.npy",
            "index": base / f"{tag}.faiss", "done": base / f"done-{tag}.json"}


def build_synthetic(memory, n: int, cache: Path, factory: str, noise: float, seed: int = 0) -> dict:
    """N unit keys around the run's real keys (float16 on disk) and a faiss IVF index over them."""
    from ravis.io import atomic_path, save_npy

    paths = synthetic_paths(cache, n, factory)
    if paths["done"].exists():
        return paths
    paths["dir"].mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(memory), n)
    d, chunk = memory.dim, 100_000
    t0 = time.perf_counter()
    if paths["keys"].exists() and paths["rows"].exists():  # keys of another index's run
        return _index_synthetic(paths, factory, rng, n, chunk)
    with atomic_path(paths["keys"]) as tmp:
        keys = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, d))
        for s in range(0, n, chunk):
            x = memory.keys_at(rows[s:s + chunk]).astype(np.float32)
            x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(noise / np.sqrt(d))
            keys[s:s + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
        keys.flush()
        del keys
    save_npy(paths["values"], memory.values_at(rows).astype(np.float16))
    save_npy(paths["rows"], rows)
    print(f"synthetic memory: {n} x {d} keys in {time.perf_counter() - t0:.0f} s", flush=True)
    return _index_synthetic(paths, factory, rng, n, chunk, {"noise": noise, "seed": seed})


def _index_synthetic(paths: dict, factory: str, rng, n: int, chunk: int, info: dict | None = None) -> dict:
    import faiss

    from ravis.io import atomic_path, save_json

    keys = np.load(paths["keys"], mmap_mode="r")
    t0 = time.perf_counter()
    index = faiss.index_factory(keys.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    nlist = faiss.extract_index_ivf(index).nlist
    train = np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))
    index.train(np.asarray(keys[train], dtype=np.float32))
    for s in range(0, n, chunk):
        index.add(np.asarray(keys[s:s + chunk], dtype=np.float32))
    with atomic_path(paths["index"]) as tmp:
        faiss.write_index(index, str(tmp))
    print(f"{factory} trained on {len(train)} and filled in {time.perf_counter() - t0:.0f} s", flush=True)
    save_json(paths["done"], {"n": n, "factory": factory, **(info or {})})
    return paths


def synthetic_memory(memory, paths: dict):
    from ravis.memory import ArrayMemory

    rows = np.load(paths["rows"])
    n = len(rows)
    return ArrayMemory(keys=np.load(paths["keys"], mmap_mode="r"), values=np.load(paths["values"], mmap_mode="r"),
                  labels=memory.labels_at(rows), texts=memory.meta_at(rows, ["text"])["text"],
                  ids=[f"synthetic/{i}" for i in range(n)], sources=["synthetic"] * n,
                  key_encoder=memory.key_encoder, value_encoder=memory.value_encoder,
                  class_names=memory.class_names)


def exact_topk(keys, xq: np.ndarray, k: int, chunk: int = 100_000) -> tuple[np.ndarray, float]:
    """(I (nq, k), seconds per query) of exact inner-product search over float16 keys, chunked."""
    t0 = time.perf_counter()
    best_D = np.full((len(xq), 0), -np.inf, dtype=np.float32)
    best_I = np.zeros((len(xq), 0), dtype=np.int64)
    for s in range(0, len(keys), chunk):
        S = xq @ np.asarray(keys[s:s + chunk], dtype=np.float32).T  # (nq, chunk)
        D = np.concatenate([best_D, S], 1)
        I = np.concatenate([best_I, np.arange(s, s + S.shape[1])[None].repeat(len(xq), 0)], 1)
        top = np.argpartition(-D, k - 1, axis=1)[:, :k]
        best_D, best_I = np.take_along_axis(D, top, 1), np.take_along_axis(I, top, 1)
    return best_I, (time.perf_counter() - t0) / len(xq)


# --- the server (child process) ----------------------------------------------------------------

def load_predictor(args):
    import ravis

    options = {}
    if args.index and not args.synthetic:
        options = {"index": args.index, "search_params": {"nprobe": args.nprobe} if "IVF" in args.index else None}
    predictor = ravis.load(args.run, args.experiment, **options)
    if args.synthetic:
        import faiss

        paths = synthetic_paths(Path(args.cache), args.synthetic, args.factory)
        predictor.memory = synthetic_memory(predictor.memory, paths)
        predictor.index = IVFIndex(faiss.read_index(str(paths["index"])), args.nprobe)
    return predictor


def serve_child(args, port: int) -> None:
    import uvicorn
    from PIL import Image

    from ravis.serve import create_app
    from ravis.serve.threads import tune_for_latency

    predictor = load_predictor(args)
    tune_for_latency(predictor)  # as `ravis serve` does
    predictor.predict([Image.new("RGB", (64, 64), "white")])
    uvicorn.run(create_app(predictor), host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[mp.Process, int]:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=serve_child, args=(args, port), daemon=True)
    proc.start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise SystemExit("the server process died while starting")
        try:
            if request(port, "GET", "/healthz")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not start in 600 s")


# --- clients ------------------------------------------------------------------------------------

def request(port: int, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body, {"Content-Type": ctype} if ctype else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        if own:
            conn.close()


def multipart(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def query_images(run: Path, experiment: str, n: int) -> list[bytes]:
    """Up to n real test images of the experiment (its test thumbnails), as upload bodies."""
    import pyarrow.parquet as pq

    from ravis.run_folder import RunFolder

    table = pq.read_table(RunFolder(run).experiment(experiment).test_thumbnails, columns=["image"])
    return [multipart(b) for b in table.column("image").to_pylist()[:n]]


def client_loop(port: int, bodies: list[bytes], offset: int, stop, records: list, errors: list) -> None:
    """Posts bodies in turn until ``stop()``; appends (client seconds, server timings)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    i = offset
    while not stop(len(records)):
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            status, data = request(port, "POST", "/predict", body, f"multipart/form-data; boundary={BOUNDARY}", conn)
        except (OSError, http.client.HTTPException) as e:
            errors.append(repr(e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            continue
        elapsed = time.perf_counter() - t0
        if status != 200:
            errors.append(f"{status}: {data[:200]!r}")
            continue
        records.append((elapsed, json.loads(data)["timings_ms"]))
    conn.close()


def run_clients(port: int, bodies: list[bytes], clients: int, *, requests: int | None = None,
                seconds: float | None = None) -> tuple[list, list, float]:
    """(records, errors, wall seconds) of ``clients`` threads, each for ``requests`` requests or
    all together for ``seconds``."""
    per_client = [[] for _ in range(clients)]
    errors: list = []
    t_end = time.perf_counter() + (seconds or 1e9)

    def stopper(i):
        return lambda done: (requests is not None and done >= requests) or time.perf_counter() >= t_end

    threads = [threading.Thread(target=client_loop, args=(port, bodies, 97 * i, stopper(i), per_client[i], errors))
               for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for recs in per_client for r in recs], errors, time.perf_counter() - t0


def summary(records: list) -> dict:
    """p50/p95/mean in ms of the client round trip and of every server stage."""
    out = {}
    series = {"client": [1e3 * r[0] for r in records]}
    series.update({s: [r[1][s] for r in records] for s in STAGES})
    series["search+fuse"] = [r[1]["search"] + r[1]["fuse"] for r in records]
    for name, xs in series.items():
        xs = np.asarray(xs)
        out[name] = {"p50": float(np.percentile(xs, 50)), "p95": float(np.percentile(xs, 95)), "mean": float(xs.mean())}
    return out


def print_summary(title: str, s: dict, n: int, wall: float) -> None:
    print(f"\n{title}: {n} requests in {wall:.1f} s ({n / wall:.1f} req/s)")
    print(f"  {'ms':<12} {'p50':>8} {'p95':>8} {'mean':>8}")
    for name, v in s.items():
        print(f"  {name:<12} {v['p50']:8.2f} {v['p95']:8.2f} {v['mean']:8.2f}")
    ratio = s["search+fuse"]["p50"] / s["encode"]["p50"]
    print(f"  (search + fuse) / encode at p50: {ratio:.3f}  "
          f"({'under' if ratio < 1 else 'NOT under'} the encoder's time)")


# --- the two benchmarks -------------------------------------------------------------------------

def prepare_synthetic(args) -> None:
    """Builds (or reuses) the synthetic memory and reports the IVF index's recall@k."""
    import faiss

    import io

    import pyarrow.parquet as pq
    from PIL import Image

    import ravis
    from ravis.run_folder import RunFolder

    predictor = ravis.load(args.run, args.experiment)
    paths = build_synthetic(predictor.memory, args.synthetic, Path(args.cache), args.factory, args.noise)
    table = pq.read_table(RunFolder(args.run).experiment(args.experiment).test_thumbnails, columns=["image"])
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in table.column("image").to_pylist()[:args.recall_queries]]
    xq = np.concatenate([predictor.encoder.encode_pixels(np.stack([predictor.encoder.preprocess(im)]))
                         for im in images])
    keys = np.load(paths["keys"], mmap_mode="r")
    k = predictor.k
    I_ref, exact_s = exact_topk(keys, xq, k)
    index = faiss.read_index(str(paths["index"]))
    print(f"\n{args.factory} over the synthetic memory: {len(keys)} entries, k={k}, {len(xq)} real test queries; exact search "
          f"(numpy, float16 keys, chunked) {1e3 * exact_s:.0f} ms/query")
    print(f"  {'nprobe':>6} {'recall@k':>9} {'ms/query':>9}")
    for nprobe in sorted({1, 4, 8, 16, 32, 64, args.nprobe}):
        ivf = IVFIndex(index, nprobe)
        t0 = time.perf_counter()
        I = np.concatenate([ivf.search(q[None], k)[1] for q in xq])
        ms = 1e3 * (time.perf_counter() - t0) / len(xq)
        rec = np.mean([len(set(a) & set(b)) / k for a, b in zip(I, I_ref)])
        mark = "  <- served" if nprobe == args.nprobe else ""
        print(f"  {nprobe:>6} {rec:9.3f} {ms:9.2f}{mark}")
    del index, keys, predictor


def cmd_latency(args) -> int:
    if args.synthetic:
        prepare_synthetic(args)
    bodies = query_images(Path(args.run), args.experiment, 200)
    proc, port = start_server(args)
    try:
        info = json.loads(request(port, "GET", "/healthz")[1])
        print(f"\nserver: {info['experiment']} / {info['method']}, memory of {info['memory_size']}, k={info['k']}"
              + (f", {args.factory} nprobe={args.nprobe}" if args.synthetic else
                 f", index {args.index} nprobe={args.nprobe}" if args.index else ", index from the run's config"))
        run_clients(port, bodies, 1, requests=10)  # warm-up
        records, errors, wall = run_clients(port, bodies, 1, requests=args.requests)
        print_summary("single client (sequential)", summary(records), len(records), wall)
        records, errors2, wall = run_clients(port, bodies, args.concurrency, requests=args.requests // args.concurrency)
        print_summary(f"{args.concurrency} concurrent clients", summary(records), len(records), wall)
        return 1 if errors or errors2 else 0
    finally:
        proc.terminate()
        proc.join(30)


def cmd_load(args) -> int:
    from ravis.serve.prometheus import parse_histogram_means

    bodies = query_images(Path(args.run), args.experiment, 200)
    proc, port = start_server(args)
    try:
        run_clients(port, bodies, 1, requests=10)  # warm-up, before the first scrape
        before = request(port, "GET", "/metrics")[1].decode()
        records, errors, wall = run_clients(port, bodies, args.clients, seconds=args.seconds)
        after = request(port, "GET", "/metrics")[1].decode()
    finally:
        proc.terminate()
        proc.join(30)
    s = summary(records)
    print_summary(f"load: {args.clients} clients for {args.seconds:.0f} s", s, len(records), wall)
    print(f"  errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    b, a = parse_histogram_means(before), parse_histogram_means(after)
    rb = parse_histogram_means(before, "ravis_request_seconds", "endpoint").get("/predict", (0, 0.0))
    ra = parse_histogram_means(after, "ravis_request_seconds", "endpoint").get("/predict", (0, 0.0))
    print("\n  /metrics (scrape delta) against the client, mean ms per request:")
    print(f"  {'stage':<10} {'metrics n':>9} {'metrics':>9} {'client':>9} {'ratio':>7}")
    worst = 0.0
    for stage in STAGES:
        n = a[stage][0] - b[stage][0]
        mean = 1e3 * (a[stage][0] * a[stage][1] - b[stage][0] * b[stage][1]) / max(n, 1)
        client = s[stage]["mean"]
        ratio = mean / client if client else float("nan")
        if client > 0.05:
            worst = max(worst, abs(ratio - 1))
        print(f"  {stage:<10} {n:>9} {mean:9.3f} {client:9.3f} {ratio:7.3f}")
    n = ra[0] - rb[0]
    server_total = 1e3 * (ra[0] * ra[1] - rb[0] * rb[1]) / max(n, 1)
    print(f"  {'request':<10} {n:>9} {server_total:9.3f} {s['client']['mean']:9.3f} "
          f"{server_total / s['client']['mean']:7.3f}   (server request time / client round trip)")
    agree = worst < 0.01 and (a["encode"][0] - b["encode"][0]) == len(records)
    print(f"  per-stage means agree within 1%: {'yes' if agree else 'NO'}; counts "
          f"{a['encode'][0] - b['encode'][0]} in /metrics, {len(records)} at the client")
    return 1 if errors or not agree else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in ("latency", "load"):
        q = sub.add_parser(mode)
        q.add_argument("--run", type=Path, required=True, help="a finished run folder (e.g. demo-out)")
        q.add_argument("--experiment", default=None, help="experiment of the run (default: the first)")
        q.add_argument("--synthetic", type=int, default=0, help="serve a synthetic memory of N entries")
        q.add_argument("--cache", default="/tmp/ravis-bench-serve", help="where the synthetic memory is kept")
        q.add_argument("--factory", default="IVF1024,Flat",
                       help="faiss factory string of the synthetic memory's index (IVF...)")
        q.add_argument("--nprobe", type=int, default=16, help="IVF lists searched per query")
        q.add_argument("--index", default=None,
                       help="without --synthetic: serve the run's memory with this index spec "
                            "(e.g. faiss:IVF256,Flat, searched with --nprobe)")
        q.add_argument("--noise", type=float, default=0.5, help="norm of the noise added to each real key")
        q.add_argument("--recall-queries", type=int, default=100)
        if mode == "latency":
            q.add_argument("--requests", type=int, default=200)
            q.add_argument("--concurrency", type=int, default=4)
        else:
            q.add_argument("--clients", type=int, default=8)
            q.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    if args.experiment is None:
        from ravis.io import load_json

        args.experiment = load_json(args.run / "results.json")["experiments"][0]["name"]
    return cmd_latency(args) if args.mode == "latency" else cmd_load(args)


if __name__ == "__main__":
    sys.exit(main())
