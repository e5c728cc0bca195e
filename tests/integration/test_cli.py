"""End to end through the CLI on small real data (Fashion-MNIST, Tux Paint stamps)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ravis.cli import main
from ravis.io import load_json

ROOT = Path(__file__).parents[2]
TINY = ROOT / "configs" / "tiny.yaml"
STAMPS = Path("/usr/share/tuxpaint/stamps")
needs_stamps = pytest.mark.skipif(not STAMPS.exists(), reason="Debian tuxpaint-stamps-default missing")


def test_tiny_run_then_stages_eval_predict(tmp_path, ravis_cache, capsys):
    out = tmp_path / "run"
    assert main(["run", "-c", str(TINY), "--out", str(out), "--quiet", "--cache", str(ravis_cache)]) == 0
    printed = capsys.readouterr().out
    assert "many" in printed and "few" in printed and "time (s):" in printed
    results = load_json(out / "results.json")
    exp = results["experiments"][0]
    for key in ("name", "dataset", "memory", "encoder", "k", "class_counts", "methods"):
        assert key in exp
    assert set(exp["methods"]) == {"linear", "mlp", "mean_knn", "mam", "rac", "knn_vote"}
    for m in exp["methods"].values():
        for bucket in ("top1", "many", "mid", "few"):
            assert m[bucket] is None or 0.0 <= m[bucket] <= 1.0
    assert exp["methods"]["knn_vote"]["k"] in (5, 10, 20)
    folder = out / "tiny-fmnist"
    assert (out / "config.yaml").exists() and (folder / "shots.png").exists()
    assert (folder / "accuracy_vs_k.png").exists() and (folder / "mam.safetensors").exists()

    # eval recomputes the same numbers from the saved predictions
    assert main(["eval", str(out)]) == 0
    again = load_json(out / "results.json")["experiments"][0]["methods"]
    assert again == exp["methods"]

    # predict: top-5, the evidence, and the 10 most decisive neighbours with caption/label,
    # similarity, vote share and attention
    from ravis.data import load_fashion_mnist

    image = tmp_path / "query.png"
    load_fashion_mnist().test.load_image(0).save(image)
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--json", "--cache", str(ravis_cache), str(image)]) == 0
    pred = json.loads(capsys.readouterr().out)[0]
    assert len(pred["top5"]) == 5
    assert len(pred["neighbors"]) == 10
    weights = [n[pred["decided_by"]] for n in pred["neighbors"]]
    assert weights == sorted(weights, reverse=True)
    assert {"text", "similarity", "vote_weight", "attention", "memory_id", "rank"} <= set(pred["neighbors"][0])
    assert [e["class"] for e in pred["evidence"]] == [c["class"] for c in pred["top5"]]


def test_stage_verbs(tmp_path, ravis_cache, capsys):
    common = ["-c", str(TINY), "--quiet", "--cache", str(ravis_cache)]
    assert main(["embed", *common]) == 0
    assert main(["index", *common, "--out", str(tmp_path / "idx")]) == 0
    assert main(["knn", *common]) == 0
    assert (tmp_path / "idx" / "tiny-fmnist" / "memory" / "train" / "manifest.json").exists()
    printed = capsys.readouterr().out
    assert "tiny-fmnist" in printed and "neighbours of" in printed


def test_index_verb_trains_an_approximate_index(tmp_path, ravis_cache, capsys):
    """`ravis index` goes through the one index entry point: an IVF factory is trained before
    vectors are added (it used to fail with "train the index before adding vectors"), tuned
    and cached, and `knn` then finds it instead of building another."""
    common = ["-c", str(TINY), "--quiet", "--cache", str(ravis_cache), "--set", "retrieval.index=faiss:IVF16,Flat"]
    assert main(["index", *common, "--out", str(tmp_path / "idx")]) == 0
    assert "index 'faiss:IVF16,Flat' over" in capsys.readouterr().out
    built = sorted(ravis_cache.glob("indexes/*/index.json"))
    assert built
    assert main(["knn", *common]) == 0
    assert sorted(ravis_cache.glob("indexes/*/index.json")) == built


@pytest.mark.parametrize("memory", ["train", "mapped"])
def test_train_resumes_after_interruption(tmp_path, ravis_cache, monkeypatch, memory):
    """Kill training mid-run; rerun with --resume: same result as an uninterrupted run, also
    when the memory includes a memory folder read from disk."""
    from ravis.training import trainer

    cache = tmp_path / "cache"
    shutil.copytree(ravis_cache / "embeddings", cache / "embeddings")  # embeddings warm
    args = ["-c", str(TINY), "--quiet", "--set", "methods=[mam]", "--set", "train.epochs=4",
            "--set", "train.checkpoint_every=0", "--cache", str(cache)]
    if memory == "mapped":
        from ravis.config import load_preset
        from ravis.experiment import prepare

        cfg = load_preset(TINY)
        prepare(cfg, cfg.experiments[0], cache, progress=False, stage="memory").memory.parts[0][1].save(
            tmp_path / "on-disk", dtype="float16")
        args += ["--set", f"memory.source=[train,{tmp_path / 'on-disk'}]"]
    reference = tmp_path / "ref"
    assert main(["train", *args, "--out", str(reference)]) == 0
    ref = load_json(reference / "results.json")["experiments"][0]["methods"]["mam"]
    # forget trained weights and their evaluations, keep embeddings and neighbours
    shutil.rmtree(cache / "models")
    shutil.rmtree(cache / "evaluations")

    real_epoch = trainer.TrainingLoop.run_epoch
    calls = {"n": 0}

    def dying_epoch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_epoch(*a, **kw)

    monkeypatch.setattr(trainer.TrainingLoop, "run_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(["train", *args, "--out", str(tmp_path / "resumed")])
    assert list((cache / "checkpoints").glob("*.safetensors"))
    monkeypatch.setattr(trainer.TrainingLoop, "run_epoch", real_epoch)
    assert main(["train", *args, "--out", str(tmp_path / "resumed")]) == 0
    got = load_json(tmp_path / "resumed" / "results.json")["experiments"][0]["methods"]["mam"]
    assert got == ref
    for name in ("mam.safetensors", "predictions.npz"):  # the same bytes
        assert (tmp_path / "resumed" / "tiny-fmnist" / name).read_bytes() == \
               (reference / "tiny-fmnist" / name).read_bytes()
    assert not list(cache.rglob("*.tmp"))


def _make_folder(root: Path, corrupt: bool) -> Path:
    """A small image folder from real Tux Paint stamps, 3 classes, with sidecar captions."""
    picks = {"fruit": "food/fruit", "birds": "animals/birds", "flowers": "plants/flowers"}
    for name, rel in picks.items():
        (root / name).mkdir(parents=True)
        for src in sorted((STAMPS / rel).glob("*.png"))[:10]:
            shutil.copy(src, root / name / src.name)
            txt = src.with_suffix(".txt")
            if txt.exists():
                shutil.copy(txt, root / name / txt.name)
    if corrupt:
        (root / "fruit" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
        (root / "fruit" / "empty.png").write_bytes(b"")
    return root


@needs_stamps
def test_imagefolder_run_skips_bad_images_and_strict_refuses(tmp_path, ravis_cache, capsys):
    folder = _make_folder(tmp_path / "stamps", corrupt=True)
    base = ["run", "--dataset", f"imagefolder:{folder}", "--quiet", "--cache", str(ravis_cache),
            "--set", "retrieval.k=8", "--set", "retrieval.vote_ks=[2,4,8]", "--set", "retrieval.k_curve=[4,8]",
            "--set", "retrieval.rac_texts=3", "--set", "train.epochs=2", "--set", "train.batch_size=8",
            "--set", "methods=[linear,mam,knn_vote]"]
    assert main([*base, "--out", str(tmp_path / "run")]) == 0
    exp = load_json(tmp_path / "run" / "results.json")["experiments"][0]
    skipped = {Path(s[0]).name for s in exp["skipped_images"]}
    assert {"broken.png", "empty.png"} <= skipped
    assert sum(exp["class_counts"]) + exp["num_test"] == 30  # the 30 readable stamps
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err or "empty.png" in err


def test_missing_dataset_names_the_package(tmp_path, capsys, monkeypatch):
    from ravis.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist.load_fashion_mnist, "__defaults__", (str(tmp_path / "nowhere"),))
    rc = main(["run", "--dataset", "fashion-mnist", "--out", str(tmp_path / "o"), "--quiet",
               "--cache", str(tmp_path / "c")])
    assert rc == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_demo_preset_matches_the_issue():
    from ravis.config import load_preset

    cfg = load_preset(ROOT / "configs" / "demo.yaml")
    names = [e.name for e in cfg.experiments]
    # Tux Paint first: small and real, its table prints within two minutes of a cold start
    assert names == ["tuxpaint", "fmnist-lt/A", "fmnist-lt/B", "fmnist-lt/C", "tuxpaint+emoji", "fmnist-lt/noisy"]
    tux, a, b, c, tux_emoji, noisy = cfg.experiments
    assert tux.seeds == tux_emoji.seeds == [0, 1, 2]  # 163 test images: one seed is noise
    assert tux_emoji.memory.source == ["train", "emoji"] and tux_emoji.data == tux.data
    assert noisy.data.label_noise == 0.4 and noisy.data.longtail and noisy.memory.source == "full-train"
    assert a.data.longtail and a.data.imbalance_ratio == 100 and a.data.max_per_class == 1000
    assert (a.memory.source, b.memory.source, c.memory.source) == ("train", "full-train", "full-train")
    assert c.memory.wrong_value_fraction == 0.4
    assert tux.data.dataset == "tuxpaint" and tux.data.class_depth == 2 and tux.memory.values == "caption"
    assert np.isclose(a.retrieval.k, 100)


def test_a_busy_out_folder_is_refused(tmp_path, capsys):
    """One writer per run folder: a second run on a folder being written fails at once,
    saying why, and leaves the folder alone."""
    from ravis.io import exclusive_lock

    out = tmp_path / "run"
    with exclusive_lock(out / ".lock"):  # a first `ravis run` is writing it
        assert main(["run", "-c", str(TINY), "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another `ravis run`" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_full_disk_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import errno

    from ravis.cli import pipeline

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npy"))

    monkeypatch.setattr(pipeline, "run", full)
    assert main(["run", "-c", str(TINY), "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "x.npy" in err and "Traceback" not in err


@pytest.mark.parametrize("error, says", [
    (PermissionError(13, "Permission denied", "/data/out/results.json"), "give this user access"),
    (FileNotFoundError(2, "No such file or directory", "/data/in/cat.png"), "no such file"),
    (OSError(5, "Input/output error", "/data/in/shard.tar"), "run with -v"),
])
def test_a_system_error_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys, error, says):
    from ravis.cli import pipeline

    def fail(args):
        raise error

    monkeypatch.setattr(pipeline, "run", fail)
    assert main(["run", "-c", str(TINY), "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and error.filename in err and says in err and "Traceback" not in err
    assert main(["run", "-c", str(TINY), "--quiet", "-v", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("ravis run: error:")


def test_a_real_full_disk_keeps_what_was_finished(tmp_path, capsys, ravis_cache):
    """A memory built onto a 48 KiB tmpfs: one line naming the file, the shards finished before
    the disk filled still verify, and the build resumes where there is room."""
    import shutil
    import subprocess

    from PIL import Image

    from ravis.memory.sharded import ShardedMemory

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        root = tmp_path / "folder"
        rng = np.random.default_rng(0)
        for i in range(24):
            (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"c{i % 3}" / f"{i}.png")
        argv = ["memory", "build", "--source", f"imagefolder:{root}", "--rows-per-shard", "2",
                "--quiet", "--out", str(small / "m")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "disk is full" in err and str(small) in err and "Traceback" not in err
        manifest = small / "m" / "manifest.json"
        done = 0
        if manifest.exists():  # what finished is intact
            done = ShardedMemory.open(small / "m", verify=True).count
        shutil.copytree(small / "m", tmp_path / "big", ignore=shutil.ignore_patterns(".lock"))
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    argv[-1] = str(tmp_path / "big")
    assert main(argv) == 0
    mem = ShardedMemory.open(tmp_path / "big", verify=True)
    assert mem.count == 24 and done < 24
