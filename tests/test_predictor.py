"""The Predictor against the run's own evaluation, and weights written by earlier versions."""

import json
import shutil

import numpy as np
import pytest

import ravis
from ravis.data import load_fashion_mnist
from ravis.run_folder import RunFolder
from ravis.memory import ShardedMemory

N = 40  # test images compared


def _test_images(run, n=N):
    ids = json.loads((run / "tiny-fmnist" / "test_ids.json").read_text())[:n]
    test = load_fashion_mnist().test
    return [test.load_image(int(i.rsplit("/", 1)[1])) for i in ids]


def _copy_run(tiny_run, tmp_path):
    """A copy of the run folder whose weights a test may rewrite."""
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old, ignore=shutil.ignore_patterns("memory"))
    for part in (tiny_run / "tiny-fmnist" / "memory").iterdir():
        (old / "tiny-fmnist" / "memory" / part.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(part, old / "tiny-fmnist" / "memory" / part.name)
    return old


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return ravis.load(tiny_run)


def test_predictions_equal_the_evaluated_ones(tiny_run, predictor):
    """Served probabilities (calibrated with the run's temperature), neighbours, attention and
    vote shares are those the run scored on its test set."""
    out = predictor.predict(_test_images(tiny_run), top_neighbors=None)
    with np.load(tiny_run / "tiny-fmnist" / "predictions.npz") as f:
        logits, I, attn = f["logits_mam"][:N], f["neighbors"][:N], f["attention_mam"][:N, -1]
        votes = f["vote_weights_mam"][:N]
    temperature = json.loads((tiny_run / "tiny-fmnist" / "serving.json").read_text())["temperature"]["mam"]
    assert predictor.calibrated and predictor.temperature == temperature != 1.0
    probs = np.exp((logits - logits.max(1, keepdims=True)) / temperature)
    probs /= probs.sum(1, keepdims=True)
    memory_ids = predictor.memory.meta_at(np.arange(len(predictor.memory)), ["id"])["id"]
    for b, o in enumerate(out):
        top = [c["index"] for c in o["top5"]]
        assert top == list(np.argsort(-logits[b], kind="stable")[:5])  # ties: the lower class first
        assert np.allclose([c["probability"] for c in o["top5"]], probs[b, top], atol=1e-4)
        by_rank = sorted(o["neighbors"], key=lambda n: n["rank"])
        assert [n["memory_id"] for n in by_rank] == [memory_ids[i] for i in I[b]]
        assert np.allclose([n["attention"] for n in by_rank], attn[b], atol=2e-3)  # saved as float16
        assert np.allclose([n["vote_weight"] for n in by_rank], votes[b], atol=2e-3)


def test_weights_from_before_balanced_votes_serve_the_plain_vote(tiny_run, tmp_path):
    """A MAM weights file without label_counts (written before votes were balanced) is
    served with equal counts, the plain vote it was trained with, not refused."""
    from safetensors.numpy import load_file, save_file

    old = _copy_run(tiny_run, tmp_path)
    weights = old / "tiny-fmnist" / "mam.safetensors"
    state = load_file(weights)
    assert "label_counts" in state
    counts = state.pop("label_counts")
    save_file(state, weights)
    RunFolder(old).finish()
    served = ravis.load(old)
    assert served.model.label_counts.tolist() == [1.0] * len(counts)
    assert len(served.predict(_test_images(tiny_run, 2))) == 2


def test_weights_from_before_the_hidden_layer_serve_their_linear_head(tiny_run, tmp_path):
    """A MAM weights file without hidden.* (written before MAM's classifier had a hidden
    layer) is served with the linear head it was trained with: the logits are head(f)."""
    import torch
    from safetensors.numpy import load_file, save_file

    old = _copy_run(tiny_run, tmp_path)
    weights = old / "tiny-fmnist" / "mam.safetensors"
    state = load_file(weights)
    hidden = [k for k in state if k.startswith("hidden.")]
    assert hidden  # the run's MAM has the hidden layer
    for k in hidden:
        state.pop(k)
    save_file(state, weights)
    RunFolder(old).finish()
    served = ravis.load(old)
    assert isinstance(served.model.hidden, torch.nn.Identity)
    assert torch.equal(served.model.head.weight.detach().cpu(), torch.from_numpy(state["head.weight"]))
    assert len(served.predict(_test_images(tiny_run, 2))) == 2


def test_output_structure(tiny_run, predictor):
    o = predictor.predict(_test_images(tiny_run, 1), top_neighbors=None)[0]
    assert o["prediction"] == o["top5"][0]["class"] and len(o["top5"]) == 5
    assert len(o["neighbors"]) == o["k"] == 20
    assert o["decided_by"] == "vote_weight"  # the tiny MAM reads labels: its tiles go by vote share
    weights = [n["vote_weight"] for n in o["neighbors"]]
    assert weights == sorted(weights, reverse=True)
    assert sorted(n["rank"] for n in o["neighbors"]) == list(range(1, 21))
    assert abs(sum(weights) - 1) < 1e-4 and abs(sum(n["attention"] for n in o["neighbors"]) - 1) < 1e-4
    n = o["neighbors"][0]
    assert n["attention_by_layer"][-1] == n["attention"]
    assert len(n["attention_by_layer"]) == predictor.model.fusion.num_layers
    assert o["method_label"].startswith("MAM") and o["explanation"] and o["in_memory"] is None
    assert n["source"] == "fashion-mnist-train" and n["label"] == n["text"] and n["has_thumbnail"]
    assert set(o["timings_ms"]) == {"encode", "search", "fuse"}
    json.dumps(o)  # plain JSON types only
    assert len(predictor.predict(_test_images(tiny_run, 1), top_neighbors=10)[0]["neighbors"]) == 10


def test_methods_without_attention(tiny_run):
    img = _test_images(tiny_run, 1)
    mean = ravis.load(tiny_run, method="mean_knn").predict(img, top_neighbors=None)[0]
    assert mean["decided_by"] == "contribution" and all(n["attention"] is None for n in mean["neighbors"])
    assert sum(n["contribution"] for n in mean["neighbors"]) == pytest.approx(
        mean["evidence"][0]["parts"]["memory"], abs=1e-4)
    linear = ravis.load(tiny_run, method="linear").predict(img)[0]
    assert linear["decided_by"] is None and "reads no memory" in linear["explanation"]
    assert all(n["attention"] is None and n["vote_weight"] is None for n in linear["neighbors"])
    with pytest.raises(ValueError, match="rac"):
        ravis.load(tiny_run, method="rac")


def test_run_folder_needs_no_cache(tiny_run, monkeypatch):
    """The saved memory is loaded; nothing is rebuilt from the cache."""
    import sys

    prepare_module = sys.modules["ravis.experiment.prepare"]  # the module, not the function
    def no_prepare(*a, **kw):
        raise AssertionError("the predictor rebuilt the memory from the cache")

    monkeypatch.setattr(prepare_module, "prepare", no_prepare)
    p = ravis.load(tiny_run)
    assert len(p.memory) == json.loads((tiny_run / "tiny-fmnist" / "serving.json").read_text())["memory"]["rows"]


def test_serving_json_names_everything(tiny_run):
    info = json.loads((tiny_run / "tiny-fmnist" / "serving.json").read_text())
    assert info["k"] == 20 and len(info["class_names"]) == 10
    assert set(info["logit_adjustment"]) == {"linear", "mlp", "mean_knn", "mam", "rac"}
    [part] = info["memory"]["parts"]
    assert part["spec"] == "train" and part["path"] == "memory/train" and not part["copied"]
    memory = ShardedMemory.open(tiny_run / "tiny-fmnist" / part["path"], verify=True)
    assert memory.digest == part["digest"] and len(memory) == part["rows"] == info["memory"]["rows"]
    thumbs = memory.meta_at(np.arange(len(memory)), ["thumbnail"])["thumbnail"]
    assert all(t.startswith(b"\x89PNG") for t in thumbs)  # every training image has one
