"""Results as the paper's Table 1 (methods x many/mid/few/all), results.json and PNG plots."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_path
from ..methods import METHODS

METHOD_LABELS = {name: m.label for name, m in METHODS.items()}


def _pct(v) -> str:
    return "   -" if v is None else f"{100 * v:5.1f}"


def format_table(experiment: dict) -> str:
    """One experiment's results in the shape of the paper's Table 1 (mean +- standard
    deviation over the seeds where it ran with several)."""
    seeds = [s["seed"] for s in experiment.get("seeds", [])]
    head = (f"{experiment['name']}  (dataset {experiment['dataset']}, memory {experiment['memory']}, "
            f"k={experiment['k']}" + (f", mean +- std over seeds {seeds}" if seeds else "") + ")")
    cols = ("many", "mid", "few", "top1", "balanced")
    width = 11 if seeds else 6
    lines = [head, f"{'method':<28} " + " ".join(f"{c if c != 'top1' else 'all':>{width}}" for c in cols)]
    for name, m in experiment["methods"].items():
        label = METHOD_LABELS.get(name, name)
        if "k" in m:
            label = f"{label} (k={m['k']})"
        std = experiment.get("std", {}).get(name, {})
        cells = [_pct(m.get(c)) + (f" +-{100 * std[c]:4.1f}" if std.get(c) is not None else "") for c in cols]
        lines.append(f"{label:<28} " + " ".join(f"{c:>{width}}" for c in cells))
    if experiment.get("contamination"):
        lines.append(contamination_line(experiment["contamination"]))
    return "\n".join(lines)


def contamination_line(c: dict) -> str:
    """What the near-duplicate check found, in a sentence."""
    found = (f"{c['test_images']} of {c['test_total']} test images and {c['train_images']} of "
             f"{c['train_total']} training images have near-duplicates in the memory "
             f"(cosine >= {c['threshold']:g}; {c['test_entries']} and {c['train_entries']} entries)")
    if not (c["test_images"] or c["train_images"]):
        return f"contamination: none ({found})"
    return f"contamination: {found}; " + ("excluded from retrieval" if c["excluded"] else
                                          "KEPT (retrieval.exclude_duplicates=false): results are contaminated")


def _save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_shots(experiment: dict, path: Path) -> None:
    """Grouped bars: many / mid / few / all accuracy of each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
    _save_figure(fig, path)
    plt.close(fig)


def plot_accuracy_vs_k(experiment: dict, curves: dict[str, dict], path: Path) -> None:
    """Test accuracy versus k: the kNN vote at each k, and trained models fed their top k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ks = sorted(int(k) for k in curve)
        ax.plot(ks, [100 * curve[k] for k in ks], marker="o", label=METHOD_LABELS.get(name, name))
    ax.set_xscale("log")
    ax.set_xlabel("k (neighbours used at test time)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{experiment['name']}: accuracy versus k")
    ax.legend(fontsize=8)
    _save_figure(fig, path)
    plt.close(fig)
