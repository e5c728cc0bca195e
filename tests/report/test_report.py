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
    assert "true: " in text and "predicted: " in text and "rank 1 " in text


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


def test_contents_resolve_and_every_figure_has_its_legend(tiny_run, tmp_path, monkeypatch):
    from ravis import __version__
    from ravis.evaluation import plots

    drawn, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.append((path.name, fig)), save(fig, path)))
    text = write_report(tiny_run, tmp_path / "r" / "report.html").read_text()
    nav = re.search(r"<nav>.*?</nav>", text, re.S).group(0)
    links, ids = re.findall(r'href="#([^"]+)"', nav), re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids)) and set(links) == set(ids)  # every section listed, every link lands
    assert set(re.findall(r'href="#([^"]+)"', text)) <= set(ids)
    assert {"overview", "attention-by-rank", "tiny-fmnist", "tiny-fmnist-shots", "tiny-fmnist-accuracy-vs-k",
            "about", "timings", "config"} <= set(ids)
    assert len(drawn) >= 4
    for name, fig in drawn:
        assert plots.figure_faults(fig) == [], name
    # what a newcomer reads first: the run's name, what won, what the numbers mean
    assert "<title>run</title>" in text and "<h1>run</h1>" in text
    assert re.search(r"(leads with|tie at) \d+\.\d top-1", text)
    assert "more than 100 training images, mid-shot 20 to 100, few-shot fewer than 20" in text
    assert f"ravis {__version__}" in text and "<details>" in text and "retrieval:" in text
    assert "chosen on validation" not in text and "leave-one-out on the training queries" in text
    assert "memory: the training split, label-prompt values" in text
    assert "['" not in text and "[&#x27;" not in text  # no Python list printed


def _entry(**top1) -> dict:
    return {"name": "e", "methods": {m: {"top1": v} for m, v in top1.items()}}


def test_lead_sentence_says_who_won_by_how_much_and_ties():
    from ravis.evaluation.tables import lead_sentence

    seeded = {**_entry(mam=0.832, mlp=0.810, linear=0.7),
              "std": {"mam": {"top1": 0.002}, "mlp": {"top1": 0.023}}, "seeds": [{}, {}, {}]}
    assert lead_sentence(seeded) == ("MAM (memory attention) leads with 83.2 ± 0.2 top-1 over 3 seeds, "
                                     "2.2 points ahead of MLP (no memory) (81.0 ± 2.3)")
    assert lead_sentence(_entry(mam=0.8721, knn_vote=0.8719, rac=0.8)) == (
        "MAM (memory attention) and kNN vote tie at 87.2 top-1 (one seed), 7.2 points ahead of RAC-style (80.0)")


def test_a_tie_is_bold_on_both_sides():
    from ravis.report.html import results_table

    table = results_table(_entry(mam=0.8721, knn_vote=0.8719, rac=0.8))
    assert table.count('<td class="best">87.2</td>') == 2 and '<td class="best">80.0' not in table


def test_memory_in_words():
    from ravis.config import MemoryConfig
    from ravis.evaluation.tables import memory_words

    assert memory_words(MemoryConfig(source=["train", "emoji"], values="caption"), 15300) == (
        "the training split + emoji, caption values, 15,300 entries")
    assert memory_words(MemoryConfig(source="full-train", wrong_value_fraction=0.4), 60000) == (
        'the whole published training split, label-prompt values ("a photo of a {label}"), 40% of its '
        "values replaced by a wrong class's prompt, 60,000 entries")


def test_calibration_table():
    from ravis.report.html import calibration_table

    entry = {"methods": {"mam": {"top1": 0.8}}, "calibration": {"mam": {
        "ece": 0.021, "nll": 0.5, "ece_uncalibrated": 0.104, "nll_uncalibrated": 0.7, "temperature": 1.4,
        "reliability": {"confidence": [None] * 15, "accuracy": [None] * 15, "count": [0] * 15}}}}
    assert ("<td>MAM (memory attention)</td><td>10.4 &rarr; 2.1</td><td>0.700 &rarr; 0.500</td><td>1.40</td>"
            in calibration_table(entry))
