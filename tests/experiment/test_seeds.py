"""Several seeds per experiment: each seed's results kept, mean and standard deviation
reported, the first seed's models served."""

import json
from pathlib import Path

import numpy as np
import pytest

from ravis.config import ConfigError, load_preset
from ravis.experiment.results import aggregate_seeds
from ravis.experiment.run import run, with_seed

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


def entry(top1, few):
    return {"name": "e", "num_test": 10, "methods": {"linear": {"top1": top1, "few": few},
                                                       "knn_vote": {"top1": top1 / 2, "few": None, "k": 5}},
            "per_class": {"linear": [top1]}, "details": {"linear": {"tau": 0.0}}}


def test_aggregate_means_and_stds():
    out = aggregate_seeds([entry(0.5, 0.2), entry(0.7, None), entry(0.9, 0.4)], [0, 1, 2])
    assert out["methods"]["linear"]["top1"] == pytest.approx(0.7)
    assert out["std"]["linear"]["top1"] == pytest.approx(np.std([0.5, 0.7, 0.9]))
    assert out["methods"]["linear"]["few"] == pytest.approx(0.3)  # the seed without a value is left out
    assert out["methods"]["knn_vote"]["few"] is None and "k" not in out["methods"]["knn_vote"]
    assert [s["seed"] for s in out["seeds"]] == [0, 1, 2]
    assert out["seeds"][1]["methods"]["linear"]["top1"] == 0.7
    assert out["per_class"] == {"linear": [0.5]}  # the served seed's


def test_with_seed_sets_training_and_split_seeds():
    exp = load_preset(TINY).experiments[0]
    seeded = with_seed(exp, 7)
    assert seeded.train.seed == 7 and seeded.data.split_seed == 7
    assert seeded.memory == exp.memory and exp.train.seed == 0


def test_seeds_must_not_repeat():
    with pytest.raises(ConfigError, match="seeds"):
        load_preset(TINY, ["seeds=[1, 1]"])


def test_run_with_two_seeds(ravis_cache, tmp_path):
    cfg = load_preset(TINY, ["seeds=[0, 1]", "methods=[linear, knn_vote]", "train.epochs=1"])
    results = run(cfg, tmp_path / "run", ravis_cache, progress=False, echo=lambda s: None)
    [e] = results["experiments"]
    per_seed = [s["methods"]["linear"]["top1"] for s in e["seeds"]]
    assert [s["seed"] for s in e["seeds"]] == [0, 1]
    assert e["methods"]["linear"]["top1"] == pytest.approx(np.mean(per_seed))
    assert e["std"]["linear"]["top1"] == pytest.approx(np.std(per_seed))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["experiments"][0]["seeds"][1]["methods"] == e["seeds"][1]["methods"]
    # the run folder serves seed 0: its config says so and its predictions are seed 0's
    assert load_preset(tmp_path / "run" / "config.yaml").experiments[0].train.seed == 0
    folder = tmp_path / "run" / "tiny-fmnist"
    with np.load(folder / "predictions.npz") as f:
        acc = float((f["logits_linear"].argmax(1) == f["labels"]).mean())
    assert acc == pytest.approx(e["seeds"][0]["methods"]["linear"]["top1"])
