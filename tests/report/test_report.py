"""The HTML report: self-contained, numbers from results.json, figures and gallery present."""

import base64
import re

import numpy as np

from ravis.cli import main
from ravis.io import load_json
from ravis.report import write_report
from ravis.report.gallery import pick_examples


def test_report_is_self_contained_and_matches_results(tiny_run, tmp_path):
    out = write_report(tiny_run, tmp_path / "r" / "report.html")
    text = out.read_text()
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert "http://" not in text and "https://" not in text
    # every PNG written beside the page is embedded in it, byte for byte
    pngs = sorted((tmp_path / "r" / "report").glob("*.png"))
    assert {p.name for p in pngs} >= {"attention-by-rank.png", "tiny-fmnist-shots.png",
                                      "tiny-fmnist-accuracy-vs-k.png"}
    for p in pngs:
        assert base64.b64encode(p.read_bytes()).decode() in text
    entry = load_json(tiny_run / "results.json")["experiments"][0]
    for name, m in entry["methods"].items():
        assert f"{100 * m['top1']:.1f}" in text
    # the Figure-4 gallery: query thumbnails and neighbour tiles with weights
    assert text.count('class="example') >= 2
    assert text.count('class="tile"') >= 8 * text.count('class="example')
    assert "true: " in text and "predicted: " in text and "w 0." in text


def test_report_verb_default_location(tiny_run, capsys):
    assert main(["report", str(tiny_run)]) == 0
    assert (tiny_run / "report.html").exists()
    assert str(tiny_run / "report.html") in capsys.readouterr().out


def test_pick_examples_fills_each_cell():
    counts = np.array([200, 50, 5])  # one many-, one mid-, one few-shot class
    labels = np.repeat([0, 1, 2], 10)
    pred = labels.copy()
    pred[[0, 1, 2, 10, 20, 21]] = [1, 1, 1, 0, 0, 0]  # wrong: three many, one mid, two few
    rows = pick_examples(labels, pred, counts, per_cell=2)
    cells = [(int(labels[r]), bool(pred[r] == labels[r])) for r in rows]
    assert sorted(cells) == sorted([(0, True)] * 2 + [(0, False)] * 2 + [(1, True)] * 2 + [(1, False)]
                                   + [(2, True)] * 2 + [(2, False)] * 2)
    assert rows == pick_examples(labels, pred, counts, per_cell=2)  # seeded


def test_accuracy_versus_memory_size_has_at_least_four_sizes(tiny_run, tmp_path):
    entry = load_json(tiny_run / "results.json")["experiments"][0]
    for method in ("mam", "knn_vote"):
        curve = entry["details"][method]["accuracy_vs_memory"]
        assert len(curve) >= 4 and int(max(curve, key=int)) == entry["memory_size"]
        assert curve[str(entry["memory_size"])] == entry["methods"][method]["top1"]
    out = write_report(tiny_run, tmp_path / "r" / "report.html")
    assert (tmp_path / "r" / "report" / "memory-curve-tiny-fmnist.png").exists()
    assert "Accuracy versus memory size: tiny-fmnist" in out.read_text()
