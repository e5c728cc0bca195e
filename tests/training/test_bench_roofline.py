"""benchmarks/bench_roofline.py: its counts against the arithmetic, its bound, and a tiny run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_roofline.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_roofline", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up by name
    spec.loader.exec_module(module)
    return module


def test_counts_match_the_arithmetic(bench):
    shape = bench.TINY["tiny"]
    b, k, d, dv, c = (shape[x] for x in ("batch", "k", "d", "dv", "classes"))
    linear = bench.setup("linear", shape, batches=1)
    ops, nbytes = bench.counted(linear, b, train=False)
    assert ops == 2 * d * c  # the head's one product per sample
    assert nbytes == 4 * d + 4 * (d * c + c) / b  # the query, and the head read once per batch
    mean = bench.setup("mean_knn", shape, batches=1)
    ops, nbytes = bench.counted(mean, b, train=False)
    assert ops == 2 * dv * d + 2 * d * c  # chi on the mean value, then the head
    params = d * dv + d + d * c + c
    assert nbytes == 4 * d + 4 * k * dv + 4 * params / b  # each neighbour's value is read
    ops, nbytes = bench.counted(mean, b, train=True)
    assert ops > 2 * (2 * dv * d + 2 * d * c)  # backward costs more than forward
    assert nbytes == 4 * d + 4 * k * dv + 4 * params * bench.PARAM_PASSES / b


def test_tiny_run_writes_every_method_and_shape(bench, tmp_path):
    out = tmp_path / "roofline.json"
    assert bench.main(["--tiny", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["tiny"]
    assert results["bandwidth_gbs"] > 0 and results["gemm_gflops"] > 0
    assert set(results["methods"]) == set(bench.METHODS)
    for m in results["methods"].values():
        for stage in ("train", "eval"):
            bound = 1 / max(m[f"{stage}_bytes_per_sample"] / (results["bandwidth_gbs"] * 1e9),
                            m[f"{stage}_flops_per_sample"] / (results["gemm_gflops"] * 1e9))
            assert m[f"{stage}_bound"] == pytest.approx(bound)
            assert m[f"{stage}_fraction"] == pytest.approx(m[f"{stage}_samples_per_s"] / bound)
