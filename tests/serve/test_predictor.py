"""The Predictor against the run's own evaluation, and the run folder it loads from."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import ravis
from ravis.data import load_fashion_mnist
from ravis.run_folder import RunFolder, RunFolderError
from ravis.memory import ArrayMemory, ShardedMemory
from ravis.thumbnails import ThumbnailStore, make_thumbnail, write_thumbnails

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
    """Served probabilities, neighbours and attention are those the run scored on its test set."""
    out = predictor.predict(_test_images(tiny_run))
    with np.load(tiny_run / "tiny-fmnist" / "predictions.npz") as f:
        logits, I, attn = f["logits_mam"][:N], f["neighbors"][:N], f["attention_mam"][:N, -1]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    memory_ids = predictor.memory.meta_at(np.arange(len(predictor.memory)), ["id"])["id"]
    for b, o in enumerate(out):
        top = [c["index"] for c in o["top5"]]
        assert top == list(np.argsort(-probs[b])[:5])
        assert np.allclose([c["probability"] for c in o["top5"]], probs[b, top], atol=1e-4)
        by_rank = sorted(o["neighbors"], key=lambda n: n["rank"])
        assert [n["memory_id"] for n in by_rank] == [memory_ids[i] for i in I[b]]
        assert np.allclose([n["weight"] for n in by_rank], attn[b], atol=2e-3)  # saved as float16


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
    weights = [n["weight"] for n in o["neighbors"]]
    assert weights == sorted(weights, reverse=True)
    assert sorted(n["rank"] for n in o["neighbors"]) == list(range(1, 21))
    assert abs(sum(weights) - 1) < 1e-4
    n = o["neighbors"][0]
    assert n["weights"][-1] == n["weight"] and len(n["weights"]) == predictor.model.fusion.num_layers
    assert n["source"] == "fashion-mnist-train" and n["label"] == n["text"] and n["has_thumbnail"]
    assert set(o["timings_ms"]) == {"encode", "search", "fuse"}
    json.dumps(o)  # plain JSON types only
    assert len(predictor.predict(_test_images(tiny_run, 1), top_neighbors=10)[0]["neighbors"]) == 10


def test_methods_without_attention(tiny_run):
    img = _test_images(tiny_run, 1)
    mean = ravis.load(tiny_run, method="mean_knn").predict(img)[0]
    assert [n["weight"] for n in mean["neighbors"]] == pytest.approx([1 / 20] * 20)
    linear = ravis.load(tiny_run, method="linear").predict(img)[0]
    assert all(n["weight"] is None for n in linear["neighbors"])
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


def test_unfinished_or_old_run_folder_is_refused(tiny_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old, ignore=shutil.ignore_patterns("memory", "*.parquet"))
    info_path = old / "tiny-fmnist" / "serving.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "format": 1}))
    with pytest.raises(RunFolderError, match="serving.json: changed or damaged"):
        ravis.load(old)  # the completion record's checksum catches the edit first
    RunFolder(old).finish()  # as if an older ravis had finished it
    with pytest.raises(RunFolderError, match="serving.json: format 1"):
        ravis.load(old)
    info_path.unlink()
    with pytest.raises(RunFolderError, match="serving.json: missing"):
        ravis.load(old)


def test_a_run_without_its_completion_record_is_refused_by_every_reader(tiny_run, tmp_path, capsys):
    """A run killed while writing its outputs is never served, evaluated or reported: each
    verb says how to finish it."""
    from ravis.cli import main
    from ravis.report import write_report

    killed = tmp_path / "killed"
    shutil.copytree(tiny_run, killed)
    (killed / RunFolder.COMPLETE).unlink()
    for load in (lambda: ravis.load(killed), lambda: write_report(killed)):
        with pytest.raises(RunFolderError, match="did not finish.*ravis run"):
            load()
    for verb in (["eval", str(killed)], ["predict", "--run", str(killed), str(tmp_path / "x.png")],
                 ["report", str(killed)]):
        Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
        assert main(verb) == 2, verb
        assert "did not finish" in capsys.readouterr().err


def test_a_flipped_byte_in_a_model_file_is_refused(tiny_run, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_run, damaged)
    weights = damaged / "tiny-fmnist" / "mam.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(RunFolderError, match="mam.safetensors: changed or damaged"):
        ravis.load(damaged)
    ravis.load(damaged, method="linear")  # the other models are intact


def test_rerun_finishes_an_unfinished_folder_and_removes_stale_temporaries(tiny_run, tmp_path, ravis_cache):
    from pathlib import Path

    from ravis.cli import main

    killed = tmp_path / "killed"
    shutil.copytree(tiny_run, killed)
    (killed / RunFolder.COMPLETE).unlink()
    stale = killed / "tiny-fmnist" / ".predictions.npz.abc123.tmp"
    stale.write_bytes(b"half a file")
    tiny = Path(__file__).parents[2] / "configs" / "tiny.yaml"
    assert main(["run", "-c", str(tiny), "--out", str(killed), "--quiet", "--cache", str(ravis_cache)]) == 0
    assert not stale.exists() and (killed / RunFolder.COMPLETE).is_file()
    ravis.load(killed)


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


def test_thumbnails_round_trip_and_cache(tmp_path):
    data = load_fashion_mnist().test.subset(np.arange(12))
    cache = tmp_path / "cache"
    a = write_thumbnails(tmp_path / "a.parquet", data, [3, 5, 7], cache_dir=cache)
    b = write_thumbnails(tmp_path / "b.parquet", data, [3, 5, 7], cache_dir=cache)
    assert a.read_bytes() == b.read_bytes()
    store = ThumbnailStore.open(a)
    assert len(store) == 3 and store.get(data.ids[0]) is None
    raw, mime = store.get(data.ids[5])
    assert mime == "image/png"
    import io

    im = Image.open(io.BytesIO(raw))
    assert im.size == (28, 28)
    assert np.array_equal(np.asarray(im), np.asarray(data.load_image(5)))  # lossless for grey


def test_a_damaged_cached_thumbnail_store_is_rendered_again(tmp_path, caplog):
    """The cached store is sealed with its sha256: a changed byte is rendered again, not served."""
    from ravis.thumbnails import thumbnail_bytes

    data = load_fashion_mnist().test.subset(np.arange(6))
    cache = tmp_path / "cache"
    first = thumbnail_bytes(data, [1, 2], cache_dir=cache)
    (store,) = (cache / "thumbnails").glob("*.parquet")
    raw = bytearray(store.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    store.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        again = thumbnail_bytes(data, [1, 2], cache_dir=cache)
    assert again == first and str(store) in caplog.text


def test_make_thumbnail_bounds_and_flattens():
    rgba = Image.new("RGBA", (400, 200), (255, 0, 0, 0))  # fully transparent red
    import io

    im = Image.open(io.BytesIO(make_thumbnail(rgba)))
    assert im.format == "JPEG" and max(im.size) == 96
    assert np.asarray(im).min() > 240  # flattened on white, not red


def test_identical_memory_arrays_are_hard_linked(tiny_run, tmp_path):
    memory = ArrayMemory.from_memory(ShardedMemory.open(tiny_run / "tiny-fmnist" / "memory" / "train"))
    entries = [RunFolder(tmp_path).experiment(name).save_memory_part("train", memory, copy=False)
               for name in ("x", "y")]
    keys = "memory/train/shards/00000.keys.npy"
    assert os.path.samefile(tmp_path / "x" / keys, tmp_path / "y" / keys)
    assert entries[0]["digest"] == entries[1]["digest"]
    again = RunFolder(tmp_path).experiment("y").save_memory_part("train", memory, copy=False)
    assert again == entries[1]  # a rerun rewrites nothing


def test_a_memory_part_is_saved_once_into_the_cache_and_linked_into_each_run(tiny_run, tmp_path, caplog):
    """A run into a fresh folder links the cached copy instead of writing the memory again;
    a damaged cached copy is refused by its checksum before any run uses it."""
    memory = ArrayMemory.from_memory(ShardedMemory.open(tiny_run / "tiny-fmnist" / "memory" / "train"))
    cache = tmp_path / "cache"
    first = RunFolder(tmp_path / "run1").experiment("e").save_memory_part("train", memory, copy=False,
                                                                 cache_dir=cache)
    second = RunFolder(tmp_path / "run2").experiment("e").save_memory_part("train", memory, copy=False,
                                                                 cache_dir=cache)
    keys = "memory/train/shards/00000.keys.npy"
    (cached,) = (cache / "run-memories").glob("*/shards/00000.keys.npy")
    assert os.path.samefile(tmp_path / "run1" / "e" / keys, cached)
    assert os.path.samefile(tmp_path / "run2" / "e" / keys, cached)
    assert first["digest"] == second["digest"] == memory.save(tmp_path / "plain").digest
    assert ArrayMemory.from_memory(ShardedMemory.open(tmp_path / "run2" / "e" / "memory" / "train", verify=True)).ids == memory.ids

    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    damaged = cached.with_name("damaged")
    damaged.write_bytes(bytes(data))
    os.replace(damaged, cached)  # a new file at the cached path: the runs keep theirs
    with caplog.at_level(logging.WARNING):
        third = RunFolder(tmp_path / "run3").experiment("e").save_memory_part("train", memory, copy=False,
                                                                 cache_dir=cache)
    assert "00000.keys.npy" in caplog.text and "again" in caplog.text
    assert third["digest"] == first["digest"]
    for run in ("run1", "run3"):
        ShardedMemory.open(tmp_path / run / "e" / "memory" / "train", verify=True)

    caplog.clear()
    (entry,) = [p for p in (cache / "run-memories").iterdir() if p.is_dir()]
    (entry / "content.json").write_text("{not json")  # an unreadable record is saved again too
    with caplog.at_level(logging.WARNING):
        RunFolder(tmp_path / "run4").experiment("e").save_memory_part("train", memory, copy=False,
                                                                 cache_dir=cache)
    assert "content.json" in caplog.text
    ShardedMemory.open(tmp_path / "run4" / "e" / "memory" / "train", verify=True)
