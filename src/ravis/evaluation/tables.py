"""Results as text: the paper's Table 1 (methods x many / mid / few / all, and balanced
accuracy) and the near-duplicate check in a sentence."""

from __future__ import annotations

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


__all__ = ["METHOD_LABELS", "contamination_line", "format_table"]
