"""Every figure ravis draws (PNG, matplotlib, written atomically): many / mid / few bars and
accuracy versus k per experiment (in the run folder), and the report's attention by rank,
accuracy versus memory size and reliability diagrams.

Each method keeps one colour, line style and marker in every figure (its place in the method
registry), so curves that coincide stay visible and a reader learns the key once. Figures with
more than one line have a legend; log axes get explicit ticks (a short log range otherwise
shows one labelled tick, or colliding minor labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path
from ..methods import METHODS
from .tables import served_label

_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (3, 1)), (0, (1, 2)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
SHOT_GROUPS = ("many", "mid", "few", "top1")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _style(i: int) -> dict:
    """The i-th colour, line style and marker: no two of the first 63 share all three."""
    return {"color": f"C{i % 10}", "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
            "marker": _MARKERS[i % len(_MARKERS)]}


def method_style(name: str) -> dict:
    """One method's style in every figure."""
    names = list(METHODS)
    return _style(names.index(name) if name in names else len(names) + sum(map(ord, name)) % 7)


def _ticks(axis, values, fmt="{:,g}") -> None:
    """Explicit, labelled ticks at ``values`` (and no minor labels): a log axis over less than
    two decades otherwise shows a single labelled tick."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    values = sorted(set(values))
    axis.set_major_locator(FixedLocator(values))
    axis.set_major_formatter(lambda v, _: fmt.format(v))
    axis.set_minor_formatter(NullFormatter())


def _log_range_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 x 10^n from ``lo`` to ``hi``."""
    return [m * 10.0 ** e for e in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
            for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]


def _ringed(i: int) -> dict:
    """Hollow markers, the i-th line's larger than the last: where lines coincide (a MAM that
    validation replaced by the vote) both stay visible, one ringed by the other."""
    return {"markersize": 4 + 2 * i, "markerfacecolor": "none", "markeredgewidth": 1.3}


def _legend_beside(ax, **kw) -> None:
    # beside the axes, not over them: inside, it covered bars and curves
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, **kw)


def shot_groups(experiment: dict) -> list[str]:
    """The groups of :data:`SHOT_GROUPS` with a value for some method (an experiment whose
    classes all have over 100 training images has no mid- or few-shot group)."""
    return [g for g in SHOT_GROUPS if any(m.get(g) is not None for m in experiment["methods"].values())]


def plot_shots(experiment: dict, path: Path) -> list[str]:
    """Grouped bars: many / mid / few / all accuracy of each method, with the standard
    deviation over the seeds as error bars where it ran with several; returns the groups
    drawn (empty ones are left out)."""
    plt = _pyplot()
    methods, groups = list(experiment["methods"]), shot_groups(experiment)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(groups))
    for i, name in enumerate(methods):
        row, std = experiment["methods"][name], experiment.get("std", {}).get(name, {})
        vals = [100 * row[g] if row.get(g) is not None else 0.0 for g in groups]
        err = [100 * std[g] if std.get(g) is not None else 0.0 for g in groups] if std else None
        ax.bar(x + i * width, vals, width, yerr=err, capsize=2, color=method_style(name)["color"],
               error_kw={"elinewidth": 0.8}, label=served_label(name, row))
    ax.set_xticks(x + width * (len(methods) - 1) / 2, ["all" if g == "top1" else g for g in groups])
    ax.set_ylabel("top-1 accuracy (%)")
    seeds = len(experiment.get("seeds", []))
    ax.set_title(experiment["name"] + (f" (mean and std over {seeds} seeds)" if seeds > 1 else ""))
    _legend_beside(ax)
    _save(fig, path)
    plt.close(fig)
    return groups


def k_independent(name: str) -> bool:
    """Whether method ``name``'s input is computed once, whatever k (RAC-style: one embedding
    of its nearest neighbours' texts): truncating its neighbours to k changes nothing."""
    return name in METHODS and METHODS[name].extra is not None


def seed_curves(experiment: dict, key: str = "accuracy_vs_k") -> dict[str, list[dict[int, float]]]:
    """Each method's curve ``details[key]`` of every seed (one curve where it ran one seed)."""
    runs = [s["details"] for s in experiment.get("seeds", [])] or [experiment.get("details", {})]
    out: dict[str, list[dict[int, float]]] = {}
    for details in runs:
        for name, d in details.items():
            if d.get(key):
                out.setdefault(name, []).append({int(k): v for k, v in d[key].items()})
    return out


def _mean_curve(runs: list[dict[int, float]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(x shared by every seed, mean, standard deviation (ddof 0, as the results' std))."""
    xs = sorted(set.intersection(*(set(r) for r in runs)))
    vals = np.array([[r[x] for x in xs] for r in runs], dtype=np.float64)
    return xs, vals.mean(0), vals.std(0)


def _draw_curves(ax, experiment: dict, curves: dict[str, list[dict]]) -> list[int]:
    """Mean line (and a band of +- one std where there are several seeds) per method; the x drawn."""
    drawn = []
    for i, (name, runs) in enumerate(curves.items()):
        xs, mean, std = _mean_curve(runs)
        style = method_style(name)
        ax.plot(xs, 100 * mean, label=served_label(name, experiment["methods"].get(name)), **_ringed(i), **style)
        if len(runs) > 1:
            ax.fill_between(xs, 100 * (mean - std), 100 * (mean + std), color=style["color"], alpha=0.15, linewidth=0)
        drawn += xs
    return drawn


def plot_accuracy_vs_k(experiment: dict, curves: dict[str, dict | list[dict]], path: Path) -> None:
    """Test accuracy versus k: the kNN vote at each k, and trained models fed their top k.

    ``curves``: per method a curve {k: accuracy}, or one per seed (their mean is drawn, with
    a band of +- one standard deviation). Methods whose input does not depend on k
    (:func:`k_independent`) are left out."""
    plt = _pyplot()
    curves = {m: c if isinstance(c, list) else [c] for m, c in curves.items() if not k_independent(m)}
    fig, ax = plt.subplots(figsize=(7, 4))
    ks = _draw_curves(ax, experiment, curves)
    ax.set_xscale("log")
    _ticks(ax.xaxis, ks, "{:g}")
    ax.set_xlabel("k (neighbours used at test time)")
    ax.set_ylabel("top-1 accuracy (%)")
    seeds = max((len(c) for c in curves.values()), default=1)
    ax.set_title(f"{experiment['name']}: accuracy versus k" + (f" (mean over {seeds} seeds)" if seeds > 1 else ""))
    ax.grid(alpha=0.3)
    _legend_beside(ax)
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
    the uniform weight 1/k for reference (a flat line would mean the ranking is ignored).

    Each experiment has its own line style, and its markers sit at places of their own
    along the line, so curves that coincide (a ranking ignored alike) stay visible."""
    plt = _pyplot()
    fig, (ax, cum) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (name, curve) in enumerate(curves.items()):
        ranks = np.arange(1, len(curve) + 1)
        style = {**_style(i), "markevery": (0.02 + 0.025 * i, 0.15), "markersize": 5}
        ax.plot(ranks, curve, label=name, **style)
        cum.plot(ranks, np.cumsum(curve), label=name, **style)
    for k in sorted({len(c) for c in curves.values()}):
        ax.axhline(1.0 / k, color="grey", linestyle=":", linewidth=1, label=f"uniform 1/k (k={k})")
    top = max(len(c) for c in curves.values())
    for a in (ax, cum):
        a.set_xscale("log")
        _ticks(a.xaxis, _log_range_ticks(1, top) + [top], "{:g}")
        a.grid(alpha=0.3)
    ax.set_xlabel("retrieval rank (1 = most similar)")
    ax.set_ylabel("mean attention weight (last layer)")
    ax.set_title("attention weight versus retrieval rank")
    ax.legend(fontsize=7)
    cum.set_xlabel("retrieval rank")
    cum.set_ylabel("cumulative attention mass")
    cum.set_ylim(0, 1.02)
    cum.set_title("share of attention on the top ranks")
    cum.legend(fontsize=7, loc="lower right")
    _save(fig, path)
    plt.close(fig)


def memory_size_groups(entries: list[dict]) -> dict[str, list[dict]]:
    """Experiments on the same test set (dataset and test size) with at least two memory
    sizes: the runs where accuracy versus memory size can be drawn."""
    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(f"{e['dataset']} (test {e['num_test']})", []).append(e)
    return {k: v for k, v in groups.items() if len({e["memory_size"] for e in v}) >= 2}


def _slots(entries: list[dict]) -> dict[str, float]:
    """The x of each experiment: its memory size, experiments of one size side by side
    (a quarter of a decade apart) so that none covers another."""
    by_size: dict[int, list[str]] = {}
    for e in entries:
        by_size.setdefault(e["memory_size"], []).append(e["name"])
    return {name: size * 10 ** (0.25 * (j - (len(names) - 1) / 2))
            for size, names in by_size.items() for j, name in enumerate(names)}


def plot_memory_size(group: str, entries: list[dict], path: Path, kinds: dict[str, str] | None = None) -> None:
    """Top-1 accuracy of each memory-reading method versus memory size, one tick per
    experiment (named, with its size). A line joins only experiments of one kind
    (``kinds``: experiment -> a key equal where experiments differ in nothing but their
    memory's size); the others are points (one size may hold several kinds, as clean,
    wrong-value and noisy-label memories). Error bars: standard deviation over seeds."""
    from matplotlib.ticker import NullLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x, kinds = _slots(entries), kinds or {e["name"]: e["name"] for e in entries}
    methods = [m for m in entries[0]["methods"] if m in METHODS and METHODS[m].reads_memory]
    for i, method in enumerate(methods):
        nudge = 10 ** (0.012 * (i - (len(methods) - 1) / 2))  # methods apart within a slot
        style = method_style(method)
        pts = sorted((e["memory_size"], x[e["name"]] * nudge, 100 * e["methods"][method]["top1"],
                      100 * (e.get("std", {}).get(method, {}).get("top1") or 0), kinds[e["name"]])
                     for e in entries if e["methods"].get(method, {}).get("top1") is not None)
        ax.errorbar([p[1] for p in pts], [p[2] for p in pts], [p[3] for p in pts], linestyle="none",
                    marker=style["marker"], color=style["color"], capsize=2, label=served_label(method))
        for kind in dict.fromkeys(p[4] for p in pts):
            line = [p for p in pts if p[4] == kind]
            if len(line) > 1:
                ax.plot([p[1] for p in line], [p[2] for p in line], color=style["color"],
                        linestyle=style["linestyle"], linewidth=1)
    ax.set_xscale("log")
    _ticks(ax.xaxis, x.values())
    ax.xaxis.set_minor_locator(NullLocator())  # the slots are not at round sizes
    ax.set_xticklabels([f"{e['name']}\n{e['memory_size']:,}" for e in sorted(entries, key=lambda e: x[e["name"]])],
                       fontsize=7)
    for i, tick in enumerate(ax.xaxis.get_major_ticks()):
        tick.set_pad(3.5 + 20 * (i % 2))  # every other name a row lower: neighbours side by side
    ax.set_xlabel("memory size (entries; experiments of one size side by side)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"accuracy versus memory size: {group}")
    ax.grid(alpha=0.3, axis="y")
    _legend_beside(ax)
    _save(fig, path)
    plt.close(fig)


def plot_memory_curve(entry: dict, path: Path) -> bool:
    """Top-1 of each method of one experiment versus the memory size its test queries
    searched (``retrieval.memory_curve``; mean over seeds with a +- std band); False where
    the experiment has no such curve."""
    curves = seed_curves(entry, "accuracy_vs_memory")
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = _draw_curves(ax, entry, curves)
    ax.set_xscale("log")
    _ticks(ax.xaxis, sizes)
    ax.tick_params(axis="x", labelrotation=30)
    return _finish(fig, ax, path, "memory size searched at test time (entries)", "top-1 accuracy (%)",
                   f"{entry['name']}: accuracy versus memory size")


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> bool:
    """Labels, grid and the legend beside the axes; saves and closes the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_beside(ax)
    _save(fig, path)
    _pyplot().close(fig)
    return True


def plot_reliability(entry: dict, path: Path) -> bool:
    """Reliability diagram of one experiment after temperature scaling: accuracy versus mean
    confidence in each confidence bin, a line per method, the diagonal of perfect calibration,
    and each bin's share of the test images as a faint disc; False where the entry has no
    calibration (runs before it was measured)."""
    cal = entry.get("calibration") or {}
    if not cal:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for i, (name, c) in enumerate(cal.items()):
        r, style = c["reliability"], method_style(name)
        bins = [(f, a, n) for f, a, n in zip(r["confidence"], r["accuracy"], r["count"]) if n and f is not None]
        total = max(sum(n for *_, n in bins), 1)
        ax.plot([b[0] for b in bins], [b[1] for b in bins], label=served_label(name, entry["methods"].get(name)),
                **_ringed(i), **style)
        ax.scatter([b[0] for b in bins], [b[1] for b in bins], s=[900 * n / total for *_, n in bins],
                   color=style["color"], alpha=0.12, linewidths=0)
    _ticks(ax.xaxis, np.linspace(0, 1, 6), "{:.1f}")
    _ticks(ax.yaxis, np.linspace(0, 1, 6), "{:.1f}")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    return _finish(fig, ax, path, "confidence (mean top probability in the bin)", "accuracy in the bin",
                   f"{entry['name']}: reliability after temperature scaling (test)")


def _shown_ticks(axis, lim) -> list:
    """The labelled major tick labels of ``axis`` inside its view limits ``lim``."""
    lo, hi = sorted(lim)
    pad = 1e-9 * max(abs(lo), abs(hi), 1.0)
    return [t for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if lo - pad <= loc <= hi + pad and t.get_visible() and t.get_text()]


def figure_faults(fig) -> list[str]:
    """What a figure breaks of the rules in the module doc: an axes with more than one line
    (or labelled series) and no legend, an axis with fewer than two labelled ticks, tick
    labels or annotations printed over one another. Empty for a good figure (the tests
    check every figure the report draws)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # a closed figure keeps no canvas that draws
    canvas.draw()
    renderer, faults = canvas.get_renderer(), []
    for ax in fig.axes:
        name = repr(ax.get_title() or ax.get_ylabel())
        several = len(ax.get_lines()) > 1 or len(ax.get_legend_handles_labels()[0]) > 1
        if several and not (ax.get_legend() or fig.legends):
            faults.append(f"{name}: several lines, no legend")
        for which, axis, lim in (("x", ax.xaxis, ax.get_xlim()), ("y", ax.yaxis, ax.get_ylim())):
            labels = _shown_ticks(axis, lim)
            if len(labels) < 2:
                faults.append(f"{name}: {len(labels)} labelled {which} tick(s)")
            boxes = [t.get_window_extent(renderer) for t in labels + (list(ax.texts) if which == "x" else [])]
            if any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
                faults.append(f"{name}: {which} tick labels or annotations overlap")
    return faults


__all__ = ["SHOT_GROUPS", "attention_by_rank", "figure_faults", "k_independent", "memory_size_groups", "method_style",
           "plot_accuracy_vs_k", "plot_attention_by_rank", "plot_memory_curve", "plot_memory_size",
           "plot_reliability", "plot_shots", "seed_curves", "shot_groups"]
