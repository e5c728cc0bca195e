"""The results table in the paper's shape, and the contamination sentence."""

from ravis.evaluation.tables import contamination_line, format_table


def _entry(**extra):
    return {"name": "fmnist-lt/A", "dataset": "fashion-mnist (long-tailed)", "memory": "the training split, label-prompt values, 2,478 entries",
            "k": 100, "methods": {"mam": {"many": 0.9, "mid": 0.8, "few": None, "top1": 0.85, "balanced": 0.84},
                                  "knn_vote": {"many": 0.7, "mid": 0.6, "few": 0.5, "top1": 0.6, "balanced": 0.6,
                                               "k": 20}}, **extra}


def test_a_row_per_method_with_its_label_and_the_vote_s_k():
    lines = format_table(_entry()).splitlines()
    assert lines[0].startswith("fmnist-lt/A  (dataset fashion-mnist (long-tailed), memory the training split, label-prompt values, 2,478 entries, k=100")
    assert lines[1].split() == ["method", "many", "mid", "few", "all", "balanced"]
    assert lines[2].split() == ["MAM", "(memory", "attention)", "90.0", "80.0", "-", "85.0", "84.0"]
    assert lines[3].split() == ["kNN", "vote", "(k=20)", "70.0", "60.0", "50.0", "60.0", "60.0"]


def test_seeds_give_mean_and_standard_deviation():
    entry = _entry(seeds=[{"seed": 0}, {"seed": 1}],
                   std={"mam": {"many": 0.01, "mid": 0.02, "few": None, "top1": 0.015, "balanced": 0.0}})
    text = format_table(entry)
    assert "mean +- std over seeds [0, 1]" in text
    assert "85.0 +- 1.5" in text and "90.0 +- 1.0" in text


def test_contamination_in_a_sentence():
    c = {"threshold": 0.99, "excluded": True, "test_images": 4, "test_total": 10000, "train_images": 0,
         "train_total": 2478, "test_entries": 5, "train_entries": 0}
    assert contamination_line(c).startswith("contamination: 4 of 10000 test images")
    assert contamination_line(c).endswith("excluded from retrieval")
    assert "KEPT" in contamination_line({**c, "excluded": False})
    assert contamination_line({**c, "test_images": 0}).startswith("contamination: none")
