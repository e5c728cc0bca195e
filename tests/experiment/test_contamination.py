"""Test images inside the memory are found through the retrieval index, counted, and kept
out of retrieval unless the config says otherwise (then with a warning)."""

import json
from pathlib import Path

import numpy as np

from ravis.cli import main
from ravis.data import load_fashion_mnist
from ravis.io import load_json

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"
LEAKED = 30


def _leak_test_images(tiny_run, root: Path) -> list[str]:
    """PNG copies of the tiny run's first test images in an ImageFolder (a crawled web set)."""
    ids = json.loads((tiny_run / "tiny-fmnist" / "test_ids.json").read_text())[:LEAKED]
    test = load_fashion_mnist().test
    for item in ids:
        i = int(item.rsplit("/", 1)[1])
        folder = root / test.class_names[test.labels[i]].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        test.load_image(i).save(folder / f"leak{i}.png")
    return ids


def test_leaked_test_images_are_counted_and_excluded(tiny_run, tmp_path, ravis_cache, caplog):
    _leak_test_images(tiny_run, tmp_path / "web")
    memdir = tmp_path / "web-memory"
    assert main(["memory", "build", "--source", f"imagefolder:{tmp_path / 'web'}", "--out", str(memdir),
                 "--quiet", "--cache", str(ravis_cache)]) == 0
    common = ["-c", str(TINY), "--quiet", "--cache", str(ravis_cache), "--set", "methods=[knn_vote]",
              "--set", f"memory.source=[train,{memdir}]"]
    assert main(["run", *common, "--out", str(tmp_path / "clean")]) == 0
    entry = load_json(tmp_path / "clean" / "results.json")["experiments"][0]
    c = entry["contamination"]
    assert c["test_images"] >= LEAKED and c["excluded"] and c["threshold"] == 0.99
    with np.load(tmp_path / "clean" / "tiny-fmnist" / "predictions.npz") as f:
        assert (f["similarities"] < 0.99).all()  # no leaked copy was retrieved

    with caplog.at_level("WARNING"):
        assert main(["run", *common, "--set", "retrieval.exclude_duplicates=false",
                     "--out", str(tmp_path / "leaky")]) == 0
    leaky = load_json(tmp_path / "leaky" / "results.json")["experiments"][0]
    assert leaky["contamination"]["test_images"] == c["test_images"] and not leaky["contamination"]["excluded"]
    assert "contaminated" in caplog.text
    with np.load(tmp_path / "leaky" / "tiny-fmnist" / "predictions.npz") as f:
        assert (f["similarities"][:, 0] >= 0.99).sum() >= LEAKED
