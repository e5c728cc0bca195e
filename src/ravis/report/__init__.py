"""``ravis report RUN_DIR``: one self-contained HTML page of a finished run.

    write_report("demo-out")   # -> demo-out/report.html, figures also in demo-out/report/*.png

Contents: the Table-1 numbers of every experiment (and a summary across them), many / mid /
few bars per method, accuracy versus k, accuracy versus memory size (where experiments share
a test set with memories of different sizes), attention mass versus retrieval rank, and a
Figure-4 gallery per experiment. Every PNG is written beside the page and embedded in it.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path

import numpy as np

from ..evaluation.plots import (attention_by_rank, memory_size_groups, plot_accuracy_vs_k,
                                plot_attention_by_rank, plot_memory_curve, plot_memory_size, plot_shots)
from ..evaluation.tables import contamination_line
from ..io import atomic_path
from ..run_folder import ExperimentFolder, RunFolder
from ..thumbnails import ThumbnailStore
from . import html
from .gallery import build_examples


def _store(path: Path) -> ThumbnailStore:
    return ThumbnailStore.open(path) if path.exists() else ThumbnailStore.empty()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _experiment_section(folder: ExperimentFolder, entry: dict, figdir: Path) -> tuple[str, np.ndarray | None]:
    """(HTML section, mean attention by rank or None) of one experiment."""
    slug = _slug(entry["name"])
    parts = [f"<h2>{escape(entry['name'])}</h2>",
             f'<p class="meta">dataset {escape(entry["dataset"])}; memory {escape(entry["memory"])} '
             f'({entry["memory_size"]} entries); k={entry["k"]}; {entry["num_train"]} training and '
             f'{entry["num_test"]} test images; encoder {escape(entry["encoder"])}, text encoder '
             f'{escape(entry["text_encoder"])}</p>', html.results_table(entry)]
    if entry.get("contamination"):
        parts.append(f'<p class="meta">{escape(contamination_line(entry["contamination"]))}</p>')
    shots = figdir / f"{slug}-shots.png"
    plot_shots(entry, shots)
    parts.append(html.figure(shots, f"{entry['name']}: many/mid/few accuracy per method"))
    curves = {m: d["accuracy_vs_k"] for m, d in entry.get("details", {}).items() if d.get("accuracy_vs_k")}
    if curves:
        path = figdir / f"{slug}-accuracy-vs-k.png"
        plot_accuracy_vs_k(entry, {m: {int(k): v for k, v in c.items()} for m, c in curves.items()}, path)
        parts.append(html.figure(path, f"{entry['name']}: accuracy versus k"))
    curve = None
    with np.load(folder.predictions, allow_pickle=False) as f:
        if "attention_mam" in f:
            curve = attention_by_rank(f["attention_mam"])
    examples = build_examples(folder, entry) if folder.serving.exists() else []
    if examples:
        parts.append("<h3>What the memory attention leaned on (as the paper's Figure 4)</h3>"
                     '<p class="meta">Test images, right (green) and wrong (red), from many-, mid- and '
                     "few-shot classes, each followed by its retrieved neighbours sorted by the MAM's "
                     "last-layer attention weight (bar, relative to the row's largest; w: the weight; "
                     "rank: its place in the similarity search).</p>")
        shown = {n.memory_id: n.thumbnail for ex in examples for n in ex.neighbours if n.thumbnail}
        parts.append(html.gallery(examples, _store(folder.test_thumbnails),
                                  ThumbnailStore(list(shown), list(shown.values()))))
    return "".join(parts), curve


def write_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Writes the report of ``run_dir`` to ``out`` (default RUN_DIR/report.html); returns it."""
    run = RunFolder(run_dir)
    _, record = run.open()  # refuses an unfinished run, saying how to finish it
    run.verify_all(record)  # the report reads nearly all of them
    entries = run.read_results()["experiments"]
    out = Path(out) if out else run.report
    figdir = out.parent / out.stem
    figdir.mkdir(parents=True, exist_ok=True)
    sections, attention = [], {}
    for entry in entries:
        section, curve = _experiment_section(run.experiment(entry["name"]), entry, figdir)
        sections.append(section)
        if curve is not None:
            attention[entry["name"]] = curve
    overview = [html.summary_table(entries)]
    if attention:
        path = figdir / "attention-by-rank.png"
        plot_attention_by_rank(attention, path)
        overview.append("<h3>Attention mass versus retrieval rank (MAM, test set)</h3>"
                        + html.figure(path, "mean attention weight per retrieval rank"))
    for group, members in memory_size_groups(entries).items():
        path = figdir / f"memory-size-{_slug(group)}.png"
        plot_memory_size(group, members, path)
        overview.append(f"<h3>Accuracy versus memory size: {escape(group)}</h3>"
                        + html.figure(path, f"accuracy versus memory size, {group}"))
    for entry in entries:
        path = figdir / f"memory-curve-{_slug(entry['name'])}.png"
        if plot_memory_curve(entry, path):
            overview.append(f"<h3>Accuracy versus memory size: {escape(entry['name'])}</h3>"
                            "<p class='meta'>the trained models and the vote searching nested "
                            "random fractions of the memory at test time</p>"
                            + html.figure(path, f"accuracy versus memory size, {entry['name']}"))
    title = f"ravis report: {run.path.resolve().name}"
    body = (f"<h1>{escape(title)}</h1><p class='meta'>{len(entries)} experiment(s); written "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from {escape(str(run.path))}</p>"
            f"<h2>Overview</h2>{''.join(overview)}{''.join(sections)}")
    with atomic_path(out) as tmp:
        tmp.write_text(html.page(title, body), encoding="utf-8")
    return out


__all__ = ["write_report"]
