"""HTML pieces of the report: tables, embedded figures, the gallery. Every string from the
run (captions, class names, ids) is escaped; every image is a data URI, so the file stands alone."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from ..evaluation.tables import METHOD_LABELS
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
"""


def data_uri(data: bytes, mime: str | None = None) -> str:
    return f"data:{mime or media_type(data)};base64,{base64.b64encode(data).decode('ascii')}"


def figure(path: Path, alt: str) -> str:
    """An <img> with the PNG at ``path`` embedded."""
    return f'<img class="fig" alt="{escape(alt)}" src="{data_uri(path.read_bytes(), "image/png")}">'


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def results_table(entry: dict) -> str:
    """One experiment in the shape of the paper's Table 1 (best of each column in bold; mean
    and standard deviation where it ran with several seeds)."""
    cols = ("many", "mid", "few", "top1", "balanced")
    best = {c: max((m.get(c) for m in entry["methods"].values() if m.get(c) is not None), default=None)
            for c in cols}
    rows = []
    for name, m in entry["methods"].items():
        label = METHOD_LABELS.get(name, name) + (f" (k={m['k']}, chosen on validation)" if "k" in m else "")
        std = entry.get("std", {}).get(name, {})  # over the seeds, where it ran with several
        cells = "".join(f'<td class="{"best" if m.get(c) is not None and m.get(c) == best[c] else ""}">'
                        f"{_pct(m.get(c))}"
                        + (f" &plusmn; {100 * std[c]:.1f}" if std.get(c) is not None else "") + "</td>"
                        for c in cols)
        rows.append(f"<tr><td>{escape(label)}</td>{cells}</tr>")
    return ("<table><tr><th>method</th><th>many</th><th>mid</th><th>few</th><th>all</th>"
            "<th>balanced</th></tr>"
            + "".join(rows) + "</table>")


def summary_table(entries: list[dict]) -> str:
    """Methods x experiments, top-1 over all test images (as the README's table)."""
    methods = list(dict.fromkeys(m for e in entries for m in e["methods"]))
    head = "".join(f"<th>{escape(e['name'])}</th>" for e in entries)
    rows = []
    for name in methods:
        cells = "".join(f"<td>{_pct(e['methods'].get(name, {}).get('top1'))}</td>" for e in entries)
        rows.append(f"<tr><td>{escape(METHOD_LABELS.get(name, name))}</td>{cells}</tr>")
    return f"<table><tr><th>method (top-1 %, all)</th>{head}</tr>{''.join(rows)}</table>"


def _tile(store: ThumbnailStore, item_id: str, lines: list[str], weight: float | None = None,
          scale: float = 1.0, cls: str = "tile") -> str:
    found = store.get(item_id)
    img = (f'<img alt="{escape(item_id)}" title="{escape(item_id)}" src="{data_uri(found[0], found[1])}">'
           if found else '<div class="noimg">no image</div>')
    text = "".join(f"<div>{line}</div>" for line in lines)
    bar = (f'<div class="bar" title="attention {weight:.3f}"><div style="width:{100 * weight / scale:.1f}%">'
           "</div></div>" if weight is not None else "")
    return f'<div class="{cls}">{img}{bar}{text}</div>'


def gallery(examples: list[Example], test_thumbs: ThumbnailStore, memory_thumbs: ThumbnailStore) -> str:
    """One row per example: the query, then its neighbours by attention (bar: weight relative
    to the row's largest; rank: place in the similarity search)."""
    rows = []
    for ex in examples:
        verdict = "correct" if ex.correct else "wrong"
        query = _tile(test_thumbs, ex.test_id, [
            f'<span class="tag">{verdict}, {ex.bucket}-shot</span>',
            f"true: {escape(ex.true)}", f"predicted: {escape(ex.predicted)}"], cls="tile query")
        scale = max((n.weight for n in ex.neighbours), default=1.0) or 1.0
        tiles = [_tile(memory_thumbs, n.memory_id, [
            f'<div class="caption" title="{escape(n.text)}">{escape(n.text)}</div>',
            f"w {n.weight:.3f} &middot; rank {n.rank}",
            f"sim {n.similarity:.2f}" + (f" &middot; {escape(n.label)}" if n.label and n.label != n.text else "")],
            weight=n.weight, scale=scale) for n in ex.neighbours]
        rows.append(f'<div class="example {"" if ex.correct else "wrong"}">{query}{"".join(tiles)}</div>')
    return "".join(rows)


def page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


__all__ = ["data_uri", "figure", "gallery", "page", "results_table", "summary_table"]
