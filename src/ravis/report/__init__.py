"""``ravis report RUN_DIR``: one self-contained HTML page of a finished run.

    write_report("demo-out")   # -> demo-out/report.html, figures also in demo-out/report/*.png

Contents, in page order: a contents list; an overview (how to read the numbers, one sentence
per experiment saying what won and by how much, a summary table across experiments, attention
mass versus retrieval rank, accuracy versus memory size where experiments share a test set
with memories of different sizes); per experiment its Table-1 numbers, many / mid / few bars,
accuracy versus k, calibration and a Figure-4 gallery; and the run itself (ravis version,
timings, config). Every PNG is written beside the page and embedded in it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import ExperimentConfig, to_dict
from ..evaluation.plots import (attention_by_rank, k_independent, memory_size_groups, plot_accuracy_vs_k,
                                plot_attention_by_rank, plot_memory_curve, plot_memory_size, plot_reliability,
                                plot_shots, seed_curves)
from ..evaluation.tables import contamination_line, lead_sentence, memory_words, served_label, shot_thresholds
from ..io import atomic_path, load_json
from ..methods import METHODS
from ..run_folder import ExperimentFolder, RunFolder
from ..thumbnails import ThumbnailStore
from . import html
from .gallery import build_examples


def _store(path: Path) -> ThumbnailStore:
    return ThumbnailStore.open(path) if path.exists() else ThumbnailStore.empty()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


@dataclass
class _Page:
    """What the sections of one report share: where figures go, the run's experiment
    configs by name, and the section ids and headings so far (for the contents list)."""

    figdir: Path
    configs: dict[str, ExperimentConfig]
    headings: list[tuple[int, str, str]] = field(default_factory=list)
    ids: dict[tuple[str, ...], str] = field(default_factory=dict)

    def anchor(self, *key: str) -> str:
        """The id of section ``key``: the same on every call, and no two sections share one
        (experiments "a/b" and "a-b" would otherwise both be "a-b")."""
        if key not in self.ids:
            base = _slug("-".join(key))
            anchor, n = base, 2
            while anchor in self.ids.values():
                anchor, n = f"{base}-{n}", n + 1
            self.ids[key] = anchor
        return self.ids[key]

    def heading(self, level: int, title: str, *key: str) -> str:
        anchor = self.anchor(*key)
        self.headings.append((level, anchor, title))
        return f'<h{level} id="{anchor}">{escape(title)}</h{level}>'


# -- one experiment -------------------------------------------------------------------------

def _meta(entry: dict, exp: ExperimentConfig | None) -> str:
    size = entry["memory_size"]
    memory = memory_words(exp.memory, size) if exp else f"{entry['memory']}, {size:,} entries"
    seeds = [str(s["seed"]) for s in entry.get("seeds", [])]
    noise = (f"{exp.data.label_noise:.0%} of the training labels replaced by a wrong class; "
             if exp and exp.data.label_noise else "")
    return (f'<p class="meta">Dataset {escape(entry["dataset"])}: {entry["num_train"]:,} training and '
            f'{entry["num_test"]:,} test images; {escape(noise)}memory: {escape(memory)}; k={entry["k"]} '
            f'neighbours; encoder {escape(entry["encoder"])}, text encoder {escape(entry["text_encoder"])}; '
            + (f"mean &plusmn; standard deviation over seeds {', '.join(seeds)}" if seeds else "one seed")
            + "</p>")


def _shots(page: _Page, entry: dict, slug: str) -> str:
    path = page.figdir / f"{slug}-shots.png"
    groups = plot_shots(entry, path)
    missing = [g for g in ("mid", "few") if g not in groups] + (["many"] if "many" not in groups else [])
    caption = ("Top-1 accuracy on the test images of many-, mid- and few-shot classes and on all of them"
               + ("; error bars: standard deviation over the seeds" if entry.get("std") else "") + ". "
               + (f"No class of this experiment is {' or '.join(g + '-shot' for g in missing)}, so "
                  + ("that group is" if len(missing) == 1 else "those groups are") + " left out." if missing else ""))
    return (page.heading(3, f"{entry['name']}: many / mid / few", entry["name"], "shots")
            + html.figure(path, f"{entry['name']}: many/mid/few accuracy per method", escape(caption)))


def _k_caption(entry: dict, curves: dict, exp: ExperimentConfig | None) -> str:
    """Which k each method was evaluated at, and what the figure leaves out."""
    seeds = max(len(c) for c in curves.values())
    parts = [f"Mean over {seeds} seeds (band: &plusmn; one standard deviation)." if seeds > 1 else "One seed."]
    at: dict[str, list[str]] = {}
    for name, runs in curves.items():
        if not k_independent(name):
            at.setdefault(", ".join(map(str, sorted(set.intersection(*map(set, runs))))), []).append(name)
    for ks, names in at.items():
        trained = all(METHODS[n].trains for n in names if n in METHODS)
        why = (f"fed each query's top k neighbours (retrieval.k_curve; at k={entry['k']}, all of them: the "
               "table's value)" if trained else "the k of retrieval.vote_ks; the table gives the one chosen")
        labels = " and ".join(served_label(n, entry["methods"].get(n)) for n in names)
        parts.append(f"{escape(labels)} at k = {ks}: {why}.")
    for name in (n for n in curves if k_independent(n)):
        texts = f"its {exp.retrieval.rac_texts} nearest" if exp else "its nearest"
        parts.append(f"{escape(served_label(name, entry['methods'].get(name)))} is left out: its input, one embedding of {texts} "
                     "neighbours' texts (retrieval.rac_texts), is computed once and does not depend on k.")
    return " ".join(parts)


def _k_curve(page: _Page, entry: dict, slug: str) -> str:
    curves = seed_curves(entry)
    if not curves:
        return ""
    path = page.figdir / f"{slug}-accuracy-vs-k.png"
    plot_accuracy_vs_k(entry, curves, path)
    return (page.heading(3, f"{entry['name']}: accuracy versus k", entry["name"], "accuracy-vs-k")
            + html.figure(path, f"{entry['name']}: accuracy versus k",
                          _k_caption(entry, curves, page.configs.get(entry["name"]))))


def _calibration(page: _Page, entry: dict, slug: str) -> str:
    path = page.figdir / f"{slug}-reliability.png"
    if not plot_reliability(entry, path):  # a run from before calibration was measured
        return ""
    seeds = len(entry.get("seeds", []))
    caption = ("Accuracy versus confidence in 15 equal-width confidence bins of the test split, after "
               "temperature scaling; faint discs: each bin's share of the test images"
               + (f"; bins pooled over {seeds} seeds" if seeds > 1 else "") + ".")
    return (page.heading(3, f"{entry['name']}: calibration", entry["name"], "calibration")
            + html.calibration_table(entry)
            + '<p class="meta">ECE: expected calibration error over 15 equal-width confidence bins; NLL: '
            "negative log-likelihood of the true class (both lower is better) before &rarr; after dividing "
            "the logits by the temperature fitted on validation, which never changes a prediction"
            + (f"; mean over {seeds} seeds" if seeds > 1 else "") + ".</p>"
            + html.figure(path, f"{entry['name']}: reliability diagram", escape(caption)))


def _gallery(page: _Page, folder: ExperimentFolder, entry: dict) -> str:
    examples = build_examples(folder, entry) if folder.serving.exists() else []
    if not examples:
        return ""
    shown = {n.memory_id: n.thumbnail for ex in examples for n in ex.neighbours if n.thumbnail}
    return (page.heading(3, f"{entry['name']}: what decided, image by image", entry["name"], "gallery")
            + '<p class="meta">As the paper\'s Figure 4: test images, right (green) and wrong (red), from '
            "many-, mid- and few-shot classes, each with what decided in a sentence and its retrieved "
            "neighbours, most decisive first (bar: the neighbour's share of the label vote where the served "
            "MAM reads labels, else its last-layer attention weight, relative to the row's largest; vote, "
            "attn: those numbers; rank: its place in the similarity search; sim: its cosine similarity).</p>"
            + html.gallery(examples, _store(folder.test_thumbnails), ThumbnailStore(list(shown), list(shown.values()))))


def _experiment_section(page: _Page, folder: ExperimentFolder, entry: dict) -> str:
    slug = _slug(entry["name"])
    parts = [page.heading(2, entry["name"], entry["name"]), f'<p class="lead">{escape(lead_sentence(entry))}.</p>',
             _meta(entry, page.configs.get(entry["name"])), html.results_table(entry)]
    if entry.get("contamination"):
        parts.append(f'<p class="meta">{escape(contamination_line(entry["contamination"]))}</p>')
    parts += [_shots(page, entry, slug), _k_curve(page, entry, slug), _calibration(page, entry, slug),
              _gallery(page, folder, entry)]
    return "".join(parts)


# -- across experiments ---------------------------------------------------------------------

def _attention(page: _Page, run: RunFolder, entries: list[dict]) -> str:
    curves = {}
    for entry in entries:
        with np.load(run.experiment(entry["name"]).predictions, allow_pickle=False) as f:
            if "attention_mam" in f:
                curves[entry["name"]] = attention_by_rank(f["attention_mam"])
    if not curves:
        return ""
    path = page.figdir / "attention-by-rank.png"
    plot_attention_by_rank(curves, path)
    return (page.heading(3, "Attention mass versus retrieval rank (MAM, test set)", "attention-by-rank")
            + html.figure(path, "mean attention weight per retrieval rank",
                          "Left: the MAM's mean last-layer attention weight at each retrieval rank (dotted: "
                          "the uniform weight 1/k). Right: the share of the attention on the top ranks."))


def _memory_kind(exp: ExperimentConfig) -> str:
    """What an experiment is besides its memory's source: equal for experiments that differ
    in nothing but the memory's size (their points are joined by a line)."""
    d = to_dict(exp)
    for key in ("name", "seeds"):
        d.pop(key, None)
    d["memory"].pop("source")
    for key in ("memory_curve", "k_curve"):  # what is measured, not what is run
        d["retrieval"].pop(key, None)
    return json.dumps(d, sort_keys=True, default=str)


def _memory_size(page: _Page, entries: list[dict]) -> str:
    parts = []
    for group, members in memory_size_groups(entries).items():
        path = page.figdir / f"memory-size-{_slug(group)}.png"
        kinds = {e["name"]: _memory_kind(page.configs[e["name"]]) if e["name"] in page.configs else e["name"]
                 for e in members}
        plot_memory_size(group, members, path, kinds)
        alone = [n for n, k in kinds.items() if list(kinds.values()).count(k) == 1]
        caption = ("Top-1 of each method that reads the memory, per experiment; error bars: standard "
                   "deviation over seeds, where there are several. A line joins experiments that differ in "
                   "nothing but their memory's source (so its size)"
                   + (f"; {' and '.join(alone)} differ from the others in more than that, so they stand alone"
                      if alone else "") + ".")
        parts.append(page.heading(3, f"Accuracy versus memory size: {group}", "memory-size", group)
                     + html.figure(path, f"accuracy versus memory size, {group}", escape(caption)))
    for entry in entries:
        path = page.figdir / f"memory-curve-{_slug(entry['name'])}.png"
        if plot_memory_curve(entry, path):
            parts.append(page.heading(3, f"Accuracy versus memory size: {entry['name']}",
                                      entry["name"], "memory-curve")
                         + html.figure(path, f"accuracy versus memory size, {entry['name']}",
                                       "The trained models and the vote searching nested random fractions "
                                       "of the memory at test time."))
    return "".join(parts)


def _overview(page: _Page, run: RunFolder, entries: list[dict]) -> str:
    leads = "".join(f'<li><a href="#{page.anchor(e["name"])}">{escape(e["name"])}</a>: '
                    f"{escape(lead_sentence(e))}.</li>" for e in entries)
    how = (f"Numbers are top-1 accuracy (%) on the test split. Many / mid / few: {shot_thresholds()}; "
           "balanced: the mean of the per-class accuracies; &plusmn;: standard deviation over seeds; "
           "bold: the best of a column (a tie is bold on each side).")
    return (page.heading(2, "Overview", "overview") + f'<p class="meta">{how}</p><ul class="lead">{leads}</ul>'
            + html.summary_table(entries) + _attention(page, run, entries) + _memory_size(page, entries))


def _about(page: _Page, run: RunFolder, record: dict) -> str:
    timings = load_json(run.timings) if run.timings.exists() else {}
    return (page.heading(2, "About this run", "about")
            + f'<p class="meta">The run was made by ravis {escape(str(record.get("ravis", "(not recorded)")))} '
            f"and finished {escape(str(record.get('finished', '?')))}; this report was written by ravis "
            f"{escape(__version__)}; folder {escape(str(run.path))}.</p>"
            + (page.heading(3, "Timings", "timings") + html.timings_table(timings) if timings else "")
            + page.heading(3, "Config", "config")
            + html.collapsed(f"{run.CONFIG}: the resolved config of the run (click to open)",
                             run.config_file.read_text(encoding="utf-8")))


def write_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Writes the report of ``run_dir`` to ``out`` (default RUN_DIR/report.html); returns it."""
    run = RunFolder(run_dir)
    cfg, record = run.open()  # refuses an unfinished run, saying how to finish it
    run.verify_all(record)  # the report reads nearly all of them
    entries = run.read_results()["experiments"]
    out = Path(out) if out else run.report
    page = _Page(out.parent / out.stem, {e.name: e for e in cfg.experiments})
    page.figdir.mkdir(parents=True, exist_ok=True)
    body = _overview(page, run, entries)
    body += "".join(_experiment_section(page, run.experiment(e["name"]), e) for e in entries)
    body += _about(page, run, record)
    title = run.path.resolve().name
    head = (f"<h1>{escape(title)}</h1><p class='meta'>ravis report: {len(entries)} experiment(s); written "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by ravis {escape(__version__)}</p>")
    with atomic_path(out) as tmp:
        tmp.write_text(html.page(title, head + html.contents(page.headings) + body), encoding="utf-8")
    return out


__all__ = ["write_report"]
