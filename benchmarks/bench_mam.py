"""Memory Attention Module speed: ravis MemoryAttention against a plain Eq. 5-6 implementation.

The reference applies psiK (``layers[i].k``) to all k neighbours in every layer, as Eq. 6 is
written; ravis applies Wk^T once to the query instead (see fusion/memory_attention.py). Both
use the same module's parameters. The benchmark first checks that the outputs agree (1e-4
relative), then times forward + backward (``(f.sum() + attn.sum()).backward()``) of each on
CPU, best of a few runs, and prints both times and the speed-up. Exits non-zero when the
outputs disagree, or when the speed-up is below --min-speedup (20; --no-check disables).

It also prints the ratio of the two computations' multiply-adds (:func:`multiply_adds`), the
speed-up each would reach if both ran their arithmetic at the same rate. At the paper's shape
it is about 29x: psiK on every neighbour costs 2 B k d^2 per layer (forward and psiK's weight
gradient) against 3 B d^2 for Wk^T on the query (forward and two gradients), and both share
psiQ, chi and the attention products. An exact float32 implementation therefore reaches 40x
only by running its smaller products faster per multiply-add than the reference runs its one
large matrix product, which is the shape a CPU runs fastest.

    python benchmarks/bench_mam.py
    python benchmarks/bench_mam.py --batch 128 --no-check
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from ravis.fusion.memory_attention import MemoryAttention


def reference_forward(mam: MemoryAttention, z, keys, values):
    """Eq. 5-6 as written: f_l = z + chi(softmax(psiQ(f_{l-1}) . psiK(m) / sqrt(d)) V)."""
    f, attns = z, []
    for layer in mam.layers:
        k = layer.k(keys)  # (B, k, d): psiK on every neighbour
        scores = (layer.q(f)[:, None, :] * k).sum(-1) / math.sqrt(mam.dim)  # (B, k)
        attn = scores.softmax(dim=-1)  # (B, k)
        f = z + layer.chi((attn[:, None, :] @ values).squeeze(1))  # (B, d)
        attns.append(attn)
    return f, torch.stack(attns, dim=1)  # (B, d), (B, L, k)


def multiply_adds(batch: int, k: int, d: int, dv: int, layers: int) -> tuple[int, int]:
    """(reference, ravis) multiply-adds of one forward + backward, inputs needing no gradient.

    Per layer both compute psiQ (forward, weight gradient, and the input's gradient after
    the first layer, whose input is z), the attention-weighted values and chi (forward,
    weight and input gradients). The reference adds psiK on the k keys (forward and weight
    gradient; the keys need none) and the scores against the projected keys (forward and
    both inputs' gradients); ravis adds Wk^T on the query (forward, weight and input
    gradients) and the scores against the raw keys (forward and the query's gradient)."""
    b, total_ref, total_ravis = batch, 0, 0
    for layer in range(layers):
        shared = (3 if layer else 2) * b * d * d + 2 * b * k * dv + 3 * b * dv * d
        total_ref += shared + 2 * b * k * d * d + 3 * b * k * d
        total_ravis += shared + 3 * b * d * d + 2 * b * k * d
    return total_ref, total_ravis


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def time_step(forward, mam, inputs, runs: int, warmup: bool) -> float:
    """Best wall time of forward + backward over ``runs``."""
    best = float("inf")
    for i in range(runs + warmup):
        mam.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        f, attn = forward(*inputs)
        (f.sum() + attn.sum()).backward()
        if i >= warmup:  # a warm-up run pays for allocator and thread-pool start-up
            best = min(best, time.perf_counter() - t0)
    return best


def grads(mam) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in mam.named_parameters() if p.grad is not None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--dim", type=int, default=1280, help="d")
    p.add_argument("--value-dim", type=int, default=384, help="d'")
    p.add_argument("--layers", type=int, default=8, help="L")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=2, help="timed runs of the reference (ravis gets 3x)")
    p.add_argument("--min-speedup", type=float, default=20.0)
    p.add_argument("--no-check", action="store_true", help="report the speed-up without failing on it")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    mam = MemoryAttention(a.dim, a.value_dim, a.layers)
    z = torch.nn.functional.normalize(torch.randn(a.batch, a.dim), dim=-1)  # (B, d)
    keys = torch.nn.functional.normalize(torch.randn(a.batch, a.k, a.dim), dim=-1)  # (B, k, d)
    values = torch.randn(a.batch, a.k, a.value_dim)  # (B, k, d')
    inputs = (z, keys, values)
    ref_forward = lambda *x: reference_forward(mam, *x)  # noqa: E731

    with torch.no_grad():
        f, attn = mam(*inputs)
        f_ref, attn_ref = reference_forward(mam, *inputs)
    err = max(rel_err(f, f_ref), rel_err(attn, attn_ref))
    print(f"B={a.batch} k={a.k} d={a.dim} d'={a.value_dim} L={a.layers} threads={a.threads}")
    print(f"output relative error  {err:.2e}  (required <= 1e-4)")
    if not err <= 1e-4:
        print("FAIL: ravis MemoryAttention disagrees with Eq. 5-6", file=sys.stderr)
        return 1

    t_ravis = time_step(mam, mam, inputs, 3 * a.runs, warmup=True)
    g_ravis = grads(mam)
    t_ref = time_step(ref_forward, mam, inputs, a.runs, warmup=False)  # too slow to warm up
    g_ref = grads(mam)
    # Relative to the largest gradient: the first layers' gradients are tiny (each layer
    # restarts from z), and psiK's bias has a true gradient of zero, so per tensor the error
    # would be all rounding noise.
    scale = max(g.abs().max() for g in g_ref.values()).item()
    g_err = max((g_ravis[n] - g_ref[n]).abs().max().item() for n in g_ravis.keys() & g_ref.keys()) / scale
    speedup = t_ref / t_ravis
    print(f"gradient error / largest gradient  {g_err:.2e}  (not checked)")
    print(f"reference (psiK on every neighbour)  {t_ref * 1000:9.1f} ms")
    print(f"ravis MemoryAttention                {t_ravis * 1000:9.1f} ms")
    ref_ops, ravis_ops = multiply_adds(a.batch, a.k, a.dim, a.value_dim, a.layers)
    print(f"speed-up  {speedup:.1f}x  (required >= {a.min_speedup}x)")
    print(f"multiply-adds  reference {ref_ops / 1e9:.1f} G, ravis {ravis_ops / 1e9:.2f} G: "
          f"{ref_ops / ravis_ops:.1f}x at equal arithmetic rates")
    if speedup < a.min_speedup and not a.no_check:
        print(f"FAIL: speed-up {speedup:.1f}x < {a.min_speedup}x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
