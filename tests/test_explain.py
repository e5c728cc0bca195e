"""What a prediction shows is what decided it: for every test image of a Tux Paint run and of
the tiny Fashion-MNIST-LT run (memory = the training split, as fmnist-lt/A), and every method
that serves, the evidence's scores rank exactly the top 5, its parts add up to each score,
and the neighbours' vote shares, summed by class, rank the classes as the memory term does."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import ravis
from ravis.cli import main
from ravis.data import load_fashion_mnist, open_image

STAMPS = Path("/usr/share/tuxpaint/stamps")
SERVED = ["mam", "mean_knn", "linear", "mlp"]


@pytest.fixture(scope="module")
def tux_run(tmp_path_factory, ravis_cache):
    """A small Tux Paint run: the demo's experiment with fewer epochs."""
    if not STAMPS.exists():
        pytest.skip("Debian tuxpaint-stamps-default missing")
    root = tmp_path_factory.mktemp("tux")
    config = {"encoder": "efficientnet_lite0", "text_encoder": "minilm", "methods": SERVED + ["knn_vote"],
              "retrieval": {"k": 20, "vote_ks": [1, 3, 5, 10], "k_curve": [5, 10]},
              "train": {"epochs": 4, "min_steps": 0, "batch_size": 64, "val_fraction": 0.2},
              "experiments": [{"name": "tuxpaint", "memory": {"source": "train", "values": "caption"},
                               "data": {"dataset": "tuxpaint", "class_depth": 2, "longtail": False,
                                        "test_fraction": 0.2}}]}
    (root / "tux.yaml").write_text(yaml.safe_dump(config))
    out = root / "run"
    assert main(["run", "-c", str(root / "tux.yaml"), "--out", str(out), "--quiet", "--cache", str(ravis_cache)]) == 0
    return out


def _test_images(run: Path, experiment: str):
    ids = json.loads((run / experiment.replace("/", "-") / "test_ids.json").read_text())
    if experiment == "tuxpaint":
        return [open_image(STAMPS / i) for i in ids]
    test = load_fashion_mnist().test
    return [test.load_image(int(i.rsplit("/", 1)[1])) for i in ids]


def _check(out: dict, predictor) -> None:
    ev, top5 = out["evidence"], out["top5"]
    assert [e["class"] for e in ev] == [c["class"] for c in top5]
    scores = [e["score"] for e in ev]
    assert scores == sorted(scores, reverse=True)
    for e in ev:
        assert e["score"] == pytest.approx(sum(e["parts"].values()), abs=1e-4)
    # probabilities are softmax(score / T): the log-ratio of two is their score gap over T
    p = [c["probability"] for c in top5]
    assert np.log(p[0] / p[-1]) == pytest.approx((scores[0] - scores[-1]) / out["temperature"], abs=1e-3)
    if out["decided_by"] == "vote_weight":
        by_class: dict[str, float] = {}
        for n in out["neighbors"]:
            assert n["vote_weight"] >= 0
            if n["vote_weight"] and n["label"] is not None:
                by_class[n["label"]] = by_class.get(n["label"], 0.0) + n["vote_weight"]
        beta, eps = float(predictor.model.label_weight.detach()), predictor.model.label_eps
        for e in ev:  # the memory term is beta * log(eps + the class's summed shares)
            assert e["parts"]["memory"] == pytest.approx(beta * np.log(eps + by_class.get(e["class"], 0.0)),
                                                         abs=2e-4)
        order = sorted(ev, key=lambda e: -e["parts"]["memory"])
        summed = [by_class.get(e["class"], 0.0) for e in order]
        assert summed == sorted(summed, reverse=True) or beta == 0
    elif out["decided_by"] == "contribution":
        total = sum(n["contribution"] for n in out["neighbors"])
        assert total == pytest.approx(ev[0]["parts"]["memory"], abs=1e-4)
    else:
        assert set(ev[0]["parts"]) <= {"classifier", "prior"}


@pytest.mark.parametrize("which", ["tiny", "tux"])
def test_evidence_reproduces_every_served_prediction(which, request):
    run = request.getfixturevalue("tiny_run" if which == "tiny" else "tux_run")
    experiment = "tiny-fmnist" if which == "tiny" else "tuxpaint"
    images = _test_images(run, experiment)
    for method in SERVED:
        predictor = ravis.load(run, experiment=experiment, method=method)
        outputs = predictor.predict(images, top_neighbors=None)
        with np.load(run / experiment / "predictions.npz") as f:
            logits = f[f"logits_{method}"]
        # a test image with a near-duplicate in the memory (cosine >= 0.99) was evaluated with
        # it excluded (retrieval.exclude_duplicates); served, it retrieves it
        nearest = [min(o["neighbors"], key=lambda n: n["rank"])["similarity"] for o in outputs]
        clean = [b for b, s in enumerate(nearest) if s < 0.99 or method in ("linear", "mlp")]
        assert len(clean) >= len(outputs) - 2
        assert [outputs[b]["top5"][0]["index"] for b in clean] == list(logits[clean].argmax(1))
        for out in outputs:
            _check(out, predictor)
        assert predictor.calibrated


def test_a_memory_entry_is_named_as_one(tux_run):
    predictor = ravis.load(tux_run, experiment="tuxpaint")
    entry = predictor.memory.meta_at([0], ["id"])["id"][0]
    out = predictor.predict([open_image(STAMPS / entry)])[0]
    assert out["in_memory"] == entry
    assert out["neighbors"][0]["similarity"] > 0.999 or any(n["memory_id"] == entry for n in out["neighbors"])


def test_vote_words():
    from ravis.explain import in_words

    ev = [{"class": "flowers", "score": -0.5, "parts": {"classifier": 0.0, "memory": -0.5}},
          {"class": "insects", "score": -1.0, "parts": {"classifier": 0.0, "memory": -1.0}}]
    neighbours = [{"label": "insects", "vote_weight": 0.4}] + [{"label": "flowers", "vote_weight": 0.2}] * 3
    assert in_words("vote", ev, neighbours) == ("3 flowers neighbours (60% of the vote) outvoted "
                                                "1 insects neighbour (40% of the vote).")
    ev[0]["parts"], ev[1]["parts"] = {"classifier": 2.0, "memory": -2.5}, {"classifier": 0.0, "memory": -1.0}
    flipped = [{"label": "insects", "vote_weight": 0.6}, {"label": "flowers", "vote_weight": 0.4}]
    assert in_words("vote", ev, flipped).startswith("The classifier overruled the neighbours: 1 insects neighbour")


def test_words_name_the_term_that_overruled_and_skip_classes_that_cannot_win():
    from ravis.explain import evidence, in_words

    # the vote kept, with a post-hoc adjustment: the prior, not the (zero) classifier, overruled
    ev = [{"class": "rare", "score": -1.0, "parts": {"classifier": 0.0, "memory": -2.0, "prior": 1.0}},
          {"class": "common", "score": -1.5, "parts": {"classifier": 0.0, "memory": -0.5, "prior": -1.0}}]
    shares = [{"label": "common", "vote_weight": 0.7}, {"label": "rare", "vote_weight": 0.3}]
    assert in_words("vote", ev, shares, "untrained").startswith(
        "The served model is the kNN vote (validation kept it over the trained module): "
        "The prior adjustment overruled the neighbours")
    score = np.array([1.0, -np.inf, 0.5])
    ev = evidence(score, {"classifier": score}, ["a", "b", "c"])
    assert [e["class"] for e in ev] == ["a", "c"]  # b cannot be predicted
    assert in_words("linear", [{**e, "parts": {"classifier": e["score"], "memory": 0.0}} for e in ev], [])
