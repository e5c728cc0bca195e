"""The figures: attention by rank is the mean last-layer weight, the memory-size plot is drawn
only where sizes differ, the shots legend covers no bar."""

import numpy as np

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
