"""Every figure ravis draws (PNG, matplotlib, written atomically): many / mid / few bars and
accuracy versus k per experiment (in the run folder), and the report's attention by rank and
accuracy versus memory size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path
from ..methods import method as get_method
from .tables import METHOD_LABELS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_shots(experiment: dict, path: Path) -> None:
    """Grouped bars: many / mid / few / all accuracy of each method."""
    plt = _pyplot()
    methods = list(experiment["methods"])
    groups = ["many", "mid", "few", "top1"]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(groups))
    for i, name in enumerate(methods):
        vals = [experiment["methods"][name].get(g) for g in groups]
        ax.bar(x + i * width, [100 * v if v is not None else 0 for v in vals], width,
               label=METHOD_LABELS.get(name, name))
    ax.set_xticks(x + width * (len(methods) - 1) / 2, ["many", "mid", "few", "all"])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(experiment["name"])
    # beside the axes, not over them: inside, it covered the "few" bars
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    _save(fig, path)
    plt.close(fig)


def plot_accuracy_vs_k(experiment: dict, curves: dict[str, dict], path: Path) -> None:
    """Test accuracy versus k: the kNN vote at each k, and trained models fed their top k."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ks = sorted(int(k) for k in curve)
        ax.plot(ks, [100 * curve[k] for k in ks], marker="o", label=METHOD_LABELS.get(name, name))
    ax.set_xscale("log")
    ax.set_xlabel("k (neighbours used at test time)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{experiment['name']}: accuracy versus k")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def attention_by_rank(attention: np.ndarray) -> np.ndarray:
    """(k,) mean last-layer attention weight at each retrieval rank over the test set.

    Args:
        attention: (N, L, k) attention of every test query (the run's predictions.npz).
    """
    return np.asarray(attention[:, -1, :], dtype=np.float64).mean(0)


def plot_attention_by_rank(curves: dict[str, np.ndarray], path: Path) -> None:
    """Mean last-layer attention weight versus retrieval rank, one line per experiment, with
    the uniform weight 1/k for reference (a flat line would mean the ranking is ignored)."""
    plt = _pyplot()
    fig, (ax, cum) = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        ranks = np.arange(1, len(curve) + 1)
        line, = ax.plot(ranks, curve, label=name)
        ax.axhline(1.0 / len(curve), color=line.get_color(), linestyle=":", linewidth=0.8)
        cum.plot(ranks, np.cumsum(curve), label=name, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("retrieval rank (1 = most similar)")
    ax.set_ylabel("mean attention weight (last layer)")
    ax.set_title("attention mass versus retrieval rank (dotted: uniform 1/k)")
    ax.legend(fontsize=8)
    cum.set_xscale("log")
    cum.set_xlabel("retrieval rank")
    cum.set_ylabel("cumulative attention mass")
    cum.set_ylim(0, 1.02)
    cum.set_title("share of attention on the top ranks")
    cum.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def memory_size_groups(entries: list[dict]) -> dict[str, list[dict]]:
    """Experiments on the same test set (dataset and test size) with at least two memory
    sizes: the runs where accuracy versus memory size can be drawn."""
    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(f"{e['dataset']} (test {e['num_test']})", []).append(e)
    return {k: v for k, v in groups.items() if len({e["memory_size"] for e in v}) >= 2}


def plot_memory_size(group: str, entries: list[dict], path: Path) -> None:
    """Top-1 accuracy of each memory-reading method versus memory size, points labelled by
    experiment (memories of one size may differ in their values, e.g. noisy text)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    methods = [m for m in entries[0]["methods"] if get_method(m).reads_memory]
    for method in methods:
        pts = sorted((e["memory_size"], 100 * e["methods"][method]["top1"], e["name"])
                     for e in entries if e["methods"].get(method, {}).get("top1") is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=METHOD_LABELS.get(method, method))
    for e in entries:
        top = max(v["top1"] for v in e["methods"].values() if v.get("top1") is not None)
        ax.annotate(e["name"], (e["memory_size"], 100 * top), textcoords="offset points",
                    xytext=(4, 6), fontsize=7)
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short log axis
    ax.set_xlabel("memory size (entries)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"accuracy versus memory size: {group}")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_memory_curve(entry: dict, path: Path) -> bool:
    """Top-1 of each method of one experiment versus the memory size its test queries
    searched (``retrieval.memory_curve``); False where the experiment has no such curve."""
    curves = {m: d["accuracy_vs_memory"] for m, d in entry.get("details", {}).items()
              if d.get("accuracy_vs_memory")}
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, curve in curves.items():
        sizes = sorted(int(n) for n in curve)
        ax.plot(sizes, [100 * curve[str(n)] if str(n) in curve else 100 * curve[n] for n in sizes],
                marker="o", label=METHOD_LABELS.get(method, method))
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("memory size searched at test time (entries)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{entry['name']}: accuracy versus memory size")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    _save(fig, path)
    plt.close(fig)
    return True


__all__ = ["attention_by_rank", "memory_size_groups", "plot_accuracy_vs_k", "plot_attention_by_rank",
           "plot_memory_curve", "plot_memory_size", "plot_shots"]
