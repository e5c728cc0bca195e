"""benchmarks/bench_encoder_backends.py: a tiny run, whose torch float32 side must give the
ONNX graph's features (the same weights and preprocessing in two runtimes)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_encoder_backends.py"


def test_a_tiny_run_compares_every_side_with_the_reference(ravis_cache, tmp_path):
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("bench_encoder_backends", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    out = tmp_path / "backends.json"
    assert bench.main(["--n", "8", "--batch-size", "4", "--out", str(out)]) == 0
    rows = {(r["side"], r["batch_size"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows["onnxruntime f32", 4]["ratio"] == 1.0
    assert {("onnxruntime f32", 16), ("onnxruntime f32", 256), ("torch f32", 4),
            ("torch bf16", 4)} <= set(rows)
    assert rows["torch f32", 4]["cosine_min"] > 0.9999
    assert 0.95 < rows["torch bf16", 4]["cosine_min"] < 1.0  # bfloat16 changes the features a little
    assert all(r["images_per_s"] > 0 for r in rows.values())
