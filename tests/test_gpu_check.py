"""The GPU check script at tiny sizes on the CPU, so that it still runs when a GPU is lent."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_gpu_check_runs_at_tiny_sizes_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                    "--images", "8", "--batch", "4", "--workers", "2", "--tiny-vit",
                    "--mam-batch", "8", "--mam-k", "10", "--mam-dim", "32", "--mam-layers", "2",
                    "--mam-classes", "5", "--mam-steps", "2", "--nb", "500", "--nq", "16", "--dim", "32",
                    "--k", "10", "--out", str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["gpu"] is None
    assert result["embedding"]["images"] == 8 and result["embedding"]["images_per_s_model"] > 0
    assert result["mam_training"]["samples_per_s"] > 0
    # the exact index and faiss's flat index are both exact: the same neighbours
    assert result["exact_knn"]["top_k_agreement"] == 1.0
