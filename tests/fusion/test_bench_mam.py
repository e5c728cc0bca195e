"""benchmarks/bench_mam.py: its multiply-add counts against torch's own count, and a tiny run."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ravis.fusion.memory_attention import MemoryAttention

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_mam.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_mam", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def counted_multiply_adds(forward) -> int:
    """Multiply-adds of the matrix products in one forward + backward, as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        f, attn = forward()
        (f.sum() + attn.sum()).backward()
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("shape", [(8, 10, 32, 12, 3), (5, 7, 16, 24, 1)])
def test_multiply_adds_match_torch_count(bench, shape):
    b, k, d, dv, layers = shape
    torch.manual_seed(0)
    mam = MemoryAttention(d, dv, layers)
    z, keys, values = torch.randn(b, d), torch.randn(b, k, d), torch.randn(b, k, dv)
    ref, ravis = bench.multiply_adds(*shape)
    assert counted_multiply_adds(lambda: mam(z, keys, values)) == ravis
    # the reference scores its projected keys with an elementwise product and a sum, which
    # torch does not count: forward and both inputs' gradients, 3 B k d per layer
    counted_ref = counted_multiply_adds(lambda: bench.reference_forward(mam, z, keys, values))
    assert counted_ref + 3 * b * k * d * layers == ref


def test_tiny_run_reports_the_ratio(bench, capsys):
    threads = torch.get_num_threads()  # main() sets them for its timing
    try:
        assert bench.main(["--batch", "4", "--k", "6", "--dim", "16", "--value-dim", "8", "--layers", "2",
                           "--runs", "1", "--no-check"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "multiply-adds" in out and "at equal arithmetic rates" in out
