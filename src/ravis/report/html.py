"""HTML pieces of the report: tables, embedded figures, the contents list, the gallery. Every
string from the run (captions, class names, ids, the config) is escaped; every image is a data
URI, so the file stands alone."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from ..evaluation.tables import METHOD_LABELS, kept_reason, served_label
from ..thumbnails import ThumbnailStore, media_type
from .gallery import Example

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f3f7; }
td.best { font-weight: bold; }
img.fig { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.meta { color: #555; font-size: 0.92em; }
.example { display: flex; gap: 0.5em; align-items: stretch; margin: 0.6em 0; padding: 0.4em;
           border-left: 5px solid #3a3; background: #fafafa; overflow-x: auto; }
.example.wrong { border-left-color: #c33; }
.tile { width: 116px; flex: none; font-size: 0.75em; }
.tile img, .tile .noimg { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
                          background: #fff; border: 1px solid #ddd; display: block; }
.tile .noimg { display: flex; align-items: center; justify-content: center; color: #999; }
.query { width: 150px; } .query .tag { font-weight: bold; }
.bar { background: #eee; height: 7px; margin-top: 2px; } .bar > div { background: #e63; height: 100%; }
.caption { overflow-wrap: anywhere; }
figure { margin: 0.5em 0 1em; } figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
nav { background: #f7f9fb; border: 1px solid #e3e7ec; padding: 0.3em 1em; } nav ul { margin: 0.2em 0; }
.lead { font-size: 1.05em; } pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def data_uri(data: bytes, mime: str | None = None) -> str:
    return f"data:{mime or media_type(data)};base64,{base64.b64encode(data).decode('ascii')}"


def figure(path: Path, alt: str, caption: str = "") -> str:
    """The PNG at ``path`` embedded, with ``caption`` (HTML) under it."""
    img = f'<img class="fig" alt="{escape(alt)}" src="{data_uri(path.read_bytes(), "image/png")}">'
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>" if caption else img


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _best(values) -> str | None:
    """The best of ``values`` as shown (one decimal): every cell showing it is bold, so a
    tie is bold on both sides."""
    shown = [float(_pct(v)) for v in values if v is not None]
    return f"{max(shown):.1f}" if shown else None


def _cell(v, std, best: str | None, title: str = "", mark: str = "") -> str:
    text = _pct(v) + mark + (f" &plusmn; {100 * std:.1f}" if std is not None else "")
    attrs = ((' class="best"' if v is not None and _pct(v) == best else "")
             + (f' title="{escape(title)}"' if title else ""))
    return f"<td{attrs}>{text}</td>"


COLUMNS = {"many": "many", "mid": "mid", "few": "few", "top1": "all (top-1)", "balanced": "balanced"}


def results_table(entry: dict) -> str:
    """One experiment in the shape of the paper's Table 1 (best of each column in bold; mean
    and standard deviation where it ran with several seeds), and under it how each k was
    chosen and what validation kept, from the run's details."""
    methods = entry["methods"]
    best = {c: _best(m.get(c) for m in methods.values()) for c in COLUMNS}
    rows = []
    for name, m in methods.items():
        label = served_label(name, m) + (f" (k={m['k']})" if "k" in m else "")
        std = entry.get("std", {}).get(name, {})  # over the seeds, where it ran with several
        cells = "".join(_cell(m.get(c), std.get(c), best[c]) for c in COLUMNS)
        rows.append(f"<tr><td>{escape(label)}</td>{cells}</tr>")
    head = "".join(f"<th>{c}</th>" for c in COLUMNS.values())
    notes = "".join(f"<li>{escape(n)}</li>" for n in method_notes(entry))
    return (f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"
            + (f'<ul class="meta">{notes}</ul>' if notes else ""))


def method_notes(entry: dict) -> list[str]:
    """How each method's k was chosen and why validation kept what it kept, as the run
    recorded it ("details"; once per distinct text over the seeds)."""
    runs = [s["details"] for s in entry.get("seeds", [])] or [entry.get("details", {})]
    notes = []
    for name in entry["methods"]:
        texts = [d.get(name, {}).get("note") or kept_reason(d.get(name, {})) for d in runs]
        texts = list(dict.fromkeys(t for t in texts if t))
        if len(texts) == 1:
            notes.append(f"{served_label(name)}: {texts[0]}")
        elif texts:
            notes.append(f"{served_label(name)}, per seed: " + "; ".join(texts))
    return notes


def summary_table(entries: list[dict]) -> str:
    """Methods x experiments, top-1 over all test images (as the README's table; best of each
    experiment in bold, and marked where validation kept a simpler model than the trained one)."""
    methods = list(dict.fromkeys(m for e in entries for m in e["methods"]))
    head = "".join(f"<th>{escape(e['name'])}</th>" for e in entries)
    best = [_best(m.get("top1") for m in e["methods"].values()) for e in entries]
    rows, replaced = [], False
    for name in methods:
        cells = []
        for e, b in zip(entries, best):
            row = e["methods"].get(name, {})
            served = served_label(name, row)
            mark = served != served_label(name)
            replaced |= mark
            cells.append(_cell(row.get("top1"), e.get("std", {}).get(name, {}).get("top1"), b,
                               served if mark else "", " &dagger;" if mark else ""))
        rows.append(f"<tr><td>{escape(served_label(name))}</td>{''.join(cells)}</tr>")
    note = ('<p class="meta">&dagger;: validation kept a simpler model than the trained one (hover the '
            "cell, or see the experiment's table).</p>" if replaced else "")
    return f"<table><tr><th>method (top-1 %, all)</th>{head}</tr>{''.join(rows)}</table>{note}"


def calibration_table(entry: dict) -> str:
    """Per method: ECE and NLL before and after temperature scaling, and the temperature."""
    rows = []
    for name, c in entry.get("calibration", {}).items():
        rows.append(f"<tr><td>{escape(served_label(name, entry['methods'].get(name)))}</td>"
                    f"<td>{100 * c['ece_uncalibrated']:.1f} &rarr; {100 * c['ece']:.1f}</td>"
                    f"<td>{c['nll_uncalibrated']:.3f} &rarr; {c['nll']:.3f}</td>"
                    f"<td>{c['temperature']:.2f}</td></tr>")
    return ("<table><tr><th>method</th><th>ECE (%) before &rarr; after</th><th>NLL before &rarr; after</th>"
            f"<th>temperature</th></tr>{''.join(rows)}</table>")


#: The stages of timings.json (ravis.experiment) in words.
STAGES = {"data": "load the data", "embed": "embed the images", "memory": "build the memory",
          "knn": "search the neighbours", "run_folder": "write the run folder", "total": "total",
          "printed_at": "its table printed, seconds into the run"}


def timings_table(timings: dict[str, dict[str, float]]) -> str:
    """Seconds per stage (rows) and experiment (columns), as timings.json holds them."""
    stages = list(dict.fromkeys(s for t in timings.values() for s in t))
    head = "".join(f"<th>{escape(name)}</th>" for name in timings)
    name = lambda s: (f"train and test {METHOD_LABELS.get(s[7:], s[7:])}" if s.startswith("method:")
                      else STAGES.get(s, s))
    rows = "".join(f"<tr><td>{escape(name(s))}</td>"
                   + "".join(f"<td>{t[s]:,.1f}</td>" if s in t else "<td>-</td>" for t in timings.values())
                   + "</tr>" for s in stages)
    return f"<table><tr><th>stage (seconds)</th>{head}</tr>{rows}</table>"


def contents(headings: list[tuple[int, str, str]]) -> str:
    """A list of links to ``headings`` ((level 2 or 3, id, title), in page order), each
    level-3 heading nested under the level-2 one before it."""
    items: list[tuple[str, list[str]]] = []
    for level, anchor, title in headings:
        link = f'<a href="#{escape(anchor)}">{escape(title)}</a>'
        if level <= 2 or not items:
            items.append((link, []))
        else:
            items[-1][1].append(f"<li>{link}</li>")
    return "<nav><ul>" + "".join(f"<li>{link}" + (f"<ul>{''.join(sub)}</ul>" if sub else "") + "</li>"
                                 for link, sub in items) + "</ul></nav>"


def collapsed(summary: str, text: str) -> str:
    """``text`` in a <pre>, folded away under ``summary``."""
    return f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>"


def _tile(store: ThumbnailStore, item_id: str, lines: list[str], weight: float | None = None,
          scale: float = 1.0, cls: str = "tile", what: str = "") -> str:
    found = store.get(item_id)
    img = (f'<img alt="{escape(item_id)}" title="{escape(item_id)}" src="{data_uri(found[0], found[1])}">'
           if found else '<div class="noimg">no image</div>')
    text = "".join(f"<div>{line}</div>" for line in lines)
    bar = (f'<div class="bar" title="{what} {weight:.3f}"><div style="width:{100 * weight / scale:.1f}%">'
           "</div></div>" if weight is not None else "")
    return f'<div class="{cls}">{img}{bar}{text}</div>'


def gallery(examples: list[Example], test_thumbs: ThumbnailStore, memory_thumbs: ThumbnailStore) -> str:
    """One row per example: what decided in a sentence, then the query and its neighbours,
    most decisive first (bar: the neighbour's share of the label vote where the model reads
    labels, else its attention, relative to the row's largest; rank: place in the search)."""
    rows = []
    for ex in examples:
        verdict = "correct" if ex.correct else "wrong"
        query = _tile(test_thumbs, ex.test_id, [
            f'<span class="tag">{verdict}, {ex.bucket}-shot</span>',
            f"true: {escape(ex.true)}", f"predicted: {escape(ex.predicted)} ({100 * ex.probability:.0f}%)"],
            cls="tile query")
        decisive = lambda n: n.vote_weight if n.vote_weight is not None else n.attention
        scale = max((decisive(n) for n in ex.neighbours), default=1.0) or 1.0
        tiles = [_tile(memory_thumbs, n.memory_id, [
            f'<div class="caption" title="{escape(n.text)}">{escape(n.text)}</div>',
            (f"vote {n.vote_weight:.3f} &middot; " if n.vote_weight is not None else "")
            + f"attn {n.attention:.3f}",
            f"rank {n.rank} &middot; sim {n.similarity:.2f}"
            + (f" &middot; {escape(n.label)}" if n.label and n.label != n.text else "")],
            weight=decisive(n), scale=scale, what="vote share" if n.vote_weight is not None else "attention")
            for n in ex.neighbours]
        terms = "; ".join(f"{escape(e['class'])} " + " ".join(f"{k} {v:+.2f}" for k, v in e["parts"].items()
                                                            if v is not None)
                          for e in ex.evidence)
        why = f'<p class="meta why">{escape(ex.explanation)} <span title="additive terms of each score">[{terms}]</span></p>'
        rows.append(f'{why}<div class="example {"" if ex.correct else "wrong"}">{query}{"".join(tiles)}</div>')
    return "".join(rows)


def page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


__all__ = ["calibration_table", "collapsed", "contents", "data_uri", "figure", "gallery", "method_notes",
           "page", "results_table", "summary_table", "timings_table"]
