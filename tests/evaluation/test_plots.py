"""The figures: attention by rank is the mean last-layer weight, the memory-size plot is drawn
only where sizes differ, the shots legend covers no bar."""

import numpy as np
import pytest

from ravis.evaluation.plots import attention_by_rank, memory_size_groups, plot_memory_size
from ravis.io import load_json


def test_attention_by_rank_is_the_mean_last_layer_weight():
    rng = np.random.default_rng(0)
    attn = rng.random((7, 2, 5)).astype(np.float16)
    attn /= attn.sum(-1, keepdims=True)
    expect = [np.mean([float(attn[i, 1, r]) for i in range(7)]) for r in range(5)]
    assert np.allclose(attention_by_rank(attn), expect)


def test_memory_size_plot_only_where_sizes_differ(tmp_path):
    def entry(name, size, dataset="fmnist", top1=0.5):
        return {"name": name, "dataset": dataset, "num_test": 100, "memory_size": size,
                "methods": {"mam": {"top1": top1}, "knn_vote": {"top1": top1 - 0.1}, "linear": {"top1": 0.3}}}

    entries = [entry("A", 2000), entry("B", 60000, top1=0.8), entry("C", 60000, top1=0.7),
               entry("tux", 500, dataset="tuxpaint")]
    groups = memory_size_groups(entries)
    assert list(groups) == ["fmnist (test 100)"] and [e["name"] for e in groups["fmnist (test 100)"]] == ["A", "B", "C"]
    plot_memory_size("fmnist", groups["fmnist (test 100)"], tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_the_shots_legend_covers_no_bar(tiny_run, monkeypatch, tmp_path):
    from ravis.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    entry = load_json(tiny_run / "results.json")["experiments"][0]
    plots.plot_shots(entry, tmp_path / "s.png")
    fig = figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    bars = [p.get_window_extent() for p in ax.patches if p.get_height() > 0]
    assert bars and not any(legend.overlaps(b) for b in bars)


# -- every figure: a legend where it has several lines, readable ticks, seeds shown --------

def _capture(monkeypatch):
    """The figures the plots draw (and still write), with what each breaks."""
    from ravis.evaluation import plots

    drawn, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.append((path.name, fig)), save(fig, path)))
    return drawn


def _seeded_entry() -> dict:
    """Three seeds of a results entry, with mean and std as results.json aggregates them, and
    a calibration record in results.json's schema."""
    rng = np.random.default_rng(1)
    methods = ("linear", "mam", "rac", "knn_vote")
    seeds = []
    for s in range(3):
        details = {m: {"accuracy_vs_k": {str(k): float(rng.uniform(0.5, 0.9)) for k in (1, 5, 10, 20)}}
                   for m in ("mam", "rac")}
        details["knn_vote"] = {"k": 5, "accuracy_vs_k": {"5": 0.6 + s / 100, "10": 0.58, "20": 0.55}}
        rows = {m: {"top1": details.get(m, {}).get("accuracy_vs_k", {}).get("20", 0.5 + s / 50),
                    "many": 0.8, "mid": None, "few": None, "balanced": 0.7} for m in methods}
        seeds.append({"seed": s, "methods": rows, "details": details})
    mean = {m: {c: None if c in ("mid", "few") else float(np.mean([x["methods"][m][c] for x in seeds]))
                for c in seeds[0]["methods"][m]} for m in methods}
    std = {m: {c: None if c in ("mid", "few") else float(np.std([x["methods"][m][c] for x in seeds]))
               for c in seeds[0]["methods"][m]} for m in methods}
    bins = lambda a: {"confidence": [None] * 10 + [0.7, 0.75, 0.82, 0.9, 0.97], "accuracy": [None] * 10 + list(a),
                      "count": [0] * 10 + [5, 9, 20, 40, 80]}
    cal = {m: {"ece": 0.02, "nll": 0.5, "ece_uncalibrated": 0.1, "nll_uncalibrated": 0.7, "temperature": 1.4,
               "reliability": bins(rng.uniform(0.6, 1.0, 5))} for m in ("mam", "knn_vote")}
    return {"name": "seeded", "dataset": "fmnist", "num_test": 100, "memory_size": 500, "k": 20,
            "methods": mean, "std": std, "details": seeds[0]["details"], "seeds": seeds, "calibration": cal}


def test_every_plot_has_legend_ticks_and_seeds(monkeypatch, tmp_path):
    from ravis.evaluation import plots

    drawn, entry = _capture(monkeypatch), _seeded_entry()
    assert plots.plot_shots(entry, tmp_path / "s.png") == ["many", "top1"]  # no mid or few class
    plots.plot_accuracy_vs_k(entry, plots.seed_curves(entry), tmp_path / "k.png")
    assert plots.plot_reliability(entry, tmp_path / "r.png")
    plots.plot_attention_by_rank({"a": np.full(20, 0.05), "b": np.full(20, 0.05), "c": np.linspace(0.1, 0, 20)},
                                 tmp_path / "a.png")
    other = {**entry, "name": "big", "memory_size": 5000, "std": {}}
    plots.plot_memory_size("fmnist", [entry, other, {**other, "name": "big-noisy"}], tmp_path / "m.png",
                           {"seeded": "clean", "big": "clean", "big-noisy": "noisy"})
    assert [name for name, _ in drawn] == ["s.png", "k.png", "r.png", "a.png", "m.png"]
    for name, fig in drawn:
        assert plots.figure_faults(fig) == [], name
    shots, k_fig = drawn[0][1].axes[0], drawn[1][1].axes[0]
    assert [t.get_text() for t in shots.get_xticklabels()] == ["many", "all"]
    from matplotlib.container import BarContainer

    bars = [c for c in shots.containers if isinstance(c, BarContainer)]
    assert len(bars) == 4 and all(c.errorbar is not None for c in bars)  # std over the seeds
    # the curves are the mean over seeds; RAC's input does not depend on k, so it is left out
    labels = [line.get_label() for line in k_fig.get_lines()]
    assert labels == ["MAM (memory attention)", "kNN vote"]
    mam = k_fig.get_lines()[0]
    assert mam.get_ydata()[-1] == pytest.approx(100 * entry["methods"]["mam"]["top1"])
    assert len(k_fig.collections) == 2  # a +- std band per method
    # memory size: only the clean pair is joined (a line of two points per method)
    joined = [line for line in drawn[4][1].axes[0].get_lines() if len(line.get_xdata()) == 2]
    assert len(joined) == 3  # mam, rac, knn_vote read the memory


def test_figure_faults_finds_a_missing_legend_and_a_lone_tick():
    from ravis.evaluation.plots import _pyplot, figure_faults

    fig, ax = _pyplot().subplots()
    ax.plot([1, 2], [1, 2], label="a")
    ax.plot([1, 2], [2, 1], label="b")
    ax.set_xscale("log")
    ax.set_xlim(1.5, 1.9)  # inside one decade: no labelled major tick
    assert any("no legend" in f for f in figure_faults(fig))
    assert any("x tick" in f for f in figure_faults(fig))
    ax.legend()
    ax.set_xscale("linear")
    assert figure_faults(fig) == []


def test_reliability_only_where_measured(tmp_path):
    from ravis.evaluation.plots import plot_reliability

    assert plot_reliability({"name": "old", "methods": {}}, tmp_path / "r.png") is False
    assert not (tmp_path / "r.png").exists()
