"""Results as text: the paper's Table 1 (methods x many / mid / few / all, and balanced
accuracy) and the near-duplicate check in a sentence."""

from __future__ import annotations

from ..methods import METHODS

METHOD_LABELS = {name: m.label for name, m in METHODS.items()}

#: What a model that reads labels may be replaced by on validation (``details.kept``), named
#: for a reader: the untrained model is the kNN vote its zero head starts as.
KEPT_LABELS = {"untrained": "kNN vote", "balanced": "balanced kNN vote",
               "warm start": "classifier + vote (warm start, attention untrained)"}


def served_label(name: str, row: dict | None = None) -> str:
    """How tables, the report and the page name method ``name`` whose results row is ``row``:
    what is served, so a MAM that validation replaced by the vote is not called a trained
    attention module ("MAM (memory attention), kept: kNN vote"). ``row["kept"]`` is one
    choice, or one per seed."""
    label = METHOD_LABELS.get(name, name)
    kept = (row or {}).get("kept")
    if kept is None:
        return label
    seeds = [kept] if isinstance(kept, str) else [k for k in kept if k is not None]
    if all(k == "trained" for k in seeds):
        return label
    if len(set(seeds)) == 1:
        return f"{label}, kept: {KEPT_LABELS.get(seeds[0], seeds[0])}"
    counts = {k: seeds.count(k) for k in dict.fromkeys(seeds)}
    return f"{label}, kept: " + ", ".join(f"{KEPT_LABELS.get(k, k)} on {n} of {len(seeds)} seeds"
                                          for k, n in counts.items())


def kept_reason(details: dict) -> str | None:
    """Why validation kept what it kept, in a sentence (None where nothing was replaced)."""
    kept, v = details.get("kept"), details.get("vs_vote_on_validation")
    if kept is None or v is None:
        return None
    gain = f"{100 * v['gain']:+.1f} points (standard error {100 * v['se']:.1f})"
    vote, margin = KEPT_LABELS.get(v["vote"], v["vote"]), f"{v['margin']:g} standard errors"
    if kept == v["vote"]:
        return f"no candidate beat the {vote} on validation by more than {margin} (the best: {gain})"
    return f"the {KEPT_LABELS.get(kept, 'trained model')} beat the {vote} on validation by {gain}, more than {margin}"


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
    labels = {name: served_label(name, m) + (f" (k={m['k']})" if "k" in m else "")
              for name, m in experiment["methods"].items()}
    first = max(28, *map(len, labels.values()))
    lines = [head, f"{'method':<{first}} " + " ".join(f"{c if c != 'top1' else 'all':>{width}}" for c in cols)]
    for name, m in experiment["methods"].items():
        label = labels[name]
        std = experiment.get("std", {}).get(name, {})
        cells = [_pct(m.get(c)) + (f" +-{100 * std[c]:4.1f}" if std.get(c) is not None else "") for c in cols]
        lines.append(f"{label:<{first}} " + " ".join(f"{c:>{width}}" for c in cells))
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


def shot_thresholds() -> str:
    """The many / mid / few-shot buckets in words (:func:`ravis.data.longtail.shot_buckets`)."""
    from ..data.longtail import FEW_BELOW, MANY_ABOVE  # here: ravis.data loads every dataset module

    return (f"many-shot classes have more than {MANY_ABOVE} training images, mid-shot {FEW_BELOW} to "
            f"{MANY_ABOVE}, few-shot fewer than {FEW_BELOW}")


#: Memory sources and value kinds (``MemoryConfig``) in words; another source is a folder.
SOURCE_WORDS = {"train": "the training split", "full-train": "the whole published training split",
                "emoji": "emoji"}
VALUE_WORDS = {"label_prompt": "label-prompt values", "caption": "caption values", "image": "image values"}


def memory_words(memory, size: int) -> str:
    """A memory (a ``MemoryConfig``) in words: "the training split + emoji, caption values,
    6,269 entries"."""
    sources = " + ".join(SOURCE_WORDS.get(s, f"the memory {s.rstrip('/').rsplit('/', 1)[-1]}")
                         for s in memory.sources)
    values = VALUE_WORDS.get(memory.values, f"{memory.values} values")
    if memory.values == "label_prompt":
        values += f' ("{memory.prompt}")'
    wrong = (f", {memory.wrong_value_fraction:.0%} of its values replaced by a wrong class's prompt"
             if memory.wrong_value_fraction else "")
    return f"{sources}, {values}{wrong}, {size:,} entries"


def _shown(v: float, std: float | None) -> str:
    return f"{100 * v:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def lead_sentence(entry: dict, metric: str = "top1") -> str:
    """Which method won ``metric`` and by how much, in a sentence, with the standard deviation
    and the number of seeds: "MAM leads with 83.2 ± 0.2 top-1 over 3 seeds, 2.2 points
    ahead of MLP (81.0 ± 2.3)". Methods whose shown (rounded) values are equal tie."""
    rows = {n: m for n, m in entry["methods"].items() if m.get(metric) is not None}
    if not rows:
        return f"no method has a {metric} result"
    std = lambda n: entry.get("std", {}).get(n, {}).get(metric)
    shown = {n: _shown(m[metric], std(n)) for n, m in rows.items()}
    rounded = {n: round(100 * m[metric], 1) for n, m in rows.items()}
    ranked = sorted(rows, key=lambda n: -rounded[n])
    best = [n for n in ranked if rounded[n] == rounded[ranked[0]]]
    rest = ranked[len(best):]
    seeds = len(entry.get("seeds", []))
    over = f"over {seeds} seeds" if seeds > 1 else "(one seed)"
    # quoted where the name has a comma of its own ("MAM ..., kept: kNN vote"), so a list of them reads
    names = {n: served_label(n, rows[n]) for n in rows}
    label = lambda n: f"“{names[n]}”" if ", " in names[n] else names[n]
    what = "top-1" if metric == "top1" else metric
    if len(best) == 1:
        head = f"{label(best[0])} leads with {shown[best[0]]} {what} {over}"
    else:
        stds = list(dict.fromkeys(f"± {100 * std(n):.1f}" for n in best if std(n) is not None))
        head = (f"{_and([label(n) for n in best])} tie at {rounded[best[0]]:.1f} {what} {over}"
                + (f" ({stds[0]} each)" if len(stds) == 1 else f" ({', '.join(stds)})" if stds else ""))
    if not rest:
        return head
    gap = rounded[best[0]] - rounded[rest[0]]
    return f"{head}, {gap:.1f} points ahead of {label(rest[0])} ({shown[rest[0]]})"


__all__ = ["KEPT_LABELS", "METHOD_LABELS", "SOURCE_WORDS", "VALUE_WORDS", "contamination_line", "format_table",
           "kept_reason", "lead_sentence", "memory_words", "served_label", "shot_thresholds"]
