"""A run whose memory composes the training split with a sharded memory serves both parts'
thumbnails, and finds the sharded part where the run had it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import ravis
from ravis.cli import main

STAMPS = Path("/usr/share/tuxpaint/stamps")
TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


@pytest.mark.skipif(not STAMPS.exists(), reason="Debian tuxpaint-stamps-default missing")
def test_composed_memory_run_serves_sharded_thumbnails(tmp_path, ravis_cache):
    folder = tmp_path / "stamps" / "birds"
    folder.mkdir(parents=True)
    for src in sorted((STAMPS / "animals" / "birds").glob("*.png"))[:8]:
        shutil.copy(src, folder / src.name)
        shutil.copy(src.with_suffix(".txt"), folder / f"{src.stem}.txt")
    memdir = tmp_path / "birds-mem"
    assert main(["memory", "build", "--source", f"imagefolder:{tmp_path / 'stamps'}", "--out", str(memdir),
                 "--quiet", "--cache", str(ravis_cache)]) == 0
    out = tmp_path / "run"
    assert main(["run", "-c", str(TINY), "--out", str(out), "--quiet", "--cache", str(ravis_cache),
                 "--set", f"memory.source=[train,{memdir}]", "--set", "methods=[mam]",
                 "--set", "train.epochs=1"]) == 0
    info = json.loads((out / "tiny-fmnist" / "serving.json").read_text())
    parts = info["memory"]["parts"]
    assert [p["spec"] for p in parts] == ["train", str(memdir)]
    # the sharded memory is referred to, not copied; the training split is saved in the run
    assert parts[1]["path"] == str(memdir.resolve()) and not parts[1]["copied"]
    assert not (out / "tiny-fmnist" / "memory" / "birds-mem").exists()
    predictor = ravis.load(out)
    rows = np.arange(len(predictor.memory))
    meta = predictor.memory.meta_at(rows, ["id", "thumbnail"])
    stamp_rows = [r for r, i in zip(rows, meta["id"]) if i.startswith("birds-mem:")]
    assert len(stamp_rows) == 8
    assert all(predictor.thumbnail(int(r)) for r in rows)  # both parts
    assert predictor.thumbnail(int(stamp_rows[0]))[1] == "image/jpeg"


@pytest.mark.skipif(not STAMPS.exists(), reason="Debian tuxpaint-stamps-default missing")
def test_referenced_memory_changed_or_gone_is_refused(tmp_path, ravis_cache, capsys):
    """Every verb that opens a run's memory refuses one edited, moved or deleted since."""
    folder = tmp_path / "stamps" / "birds"
    folder.mkdir(parents=True)
    for src in sorted((STAMPS / "animals" / "birds").glob("*.png"))[:4]:
        shutil.copy(src, folder / src.name)
    memdir = tmp_path / "web"
    assert main(["memory", "build", "--source", f"imagefolder:{tmp_path / 'stamps'}", "--out", str(memdir),
                 "--quiet", "--cache", str(ravis_cache)]) == 0
    out, copied = tmp_path / "run", tmp_path / "copied"
    for folder_out, extra in [(out, []), (copied, ["--copy-memory"])]:
        assert main(["run", "-c", str(TINY), "--out", str(folder_out), "--quiet", "--cache", str(ravis_cache),
                     "--set", f"memory.source=[train,{memdir}]", "--set", "methods=[mam]",
                     "--set", "train.epochs=1", *extra]) == 0
    assert (copied / "tiny-fmnist" / "memory" / "web" / "manifest.json").is_file()
    ravis.load(out)
    keys = memdir / "shards" / "00000.keys.npy"
    data = bytearray(keys.read_bytes())
    data[-1] ^= 1  # an edit in place: same size, other content
    keys.write_bytes(bytes(data))
    verbs = [["eval", str(out)], ["report", str(out)], ["serve", str(out), "--port", "1"],
             ["predict", "--run", str(out), str(folder / sorted(p.name for p in folder.glob("*.png"))[0])]]
    for verb in verbs:
        capsys.readouterr()
        assert main(verb) == 2, verb
        assert "00000.keys.npy: checksum mismatch" in capsys.readouterr().err, verb
    shutil.rmtree(memdir)
    for verb in verbs:
        capsys.readouterr()
        assert main(verb) == 2, verb
        err = capsys.readouterr().err
        assert f"memory {str(memdir)!r}" in err and "has gone" in err, verb
    ravis.load(copied)  # the self-contained run folder still serves
