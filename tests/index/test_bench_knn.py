"""benchmarks/bench_knn.py runs end to end on tiny data (timings unchecked)."""

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_knn.py"


def test_bench_knn_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_knn", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # The current thread count, since main sets it for the whole process.
    rc = bench.main(["--nb", "2000", "--d", "32", "--nq", "100", "--k", "10", "--clusters", "20",
                     "--runs", "1", "--threads", str(torch.get_num_threads()), "--no-check"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "ratio ravis/faiss" in out and "recall@10 of ravis vs faiss  1.00000" in out
