"""A run whose memory composes the training split with a sharded memory serves both parts'
thumbnails, and finds the sharded part where the run had it."""

import json
import shutil
from pathlib import Path

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
    assert [spec for spec, _ in info["memory_parts"]] == ["train", str(memdir)]
    predictor = ravis.load(out)
    stamp_ids = [i for i in predictor.memory.ids if i.startswith("birds-mem:")]
    assert len(stamp_ids) == 8
    assert all(predictor.thumbnails.get(i) for i in predictor.memory.ids)  # both parts
    assert predictor.thumbnails.get(stamp_ids[0])[1] == "image/jpeg"
