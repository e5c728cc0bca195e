"""The run folder: complete or refused, every file it names checked against its record,
memory parts saved once and linked, a folder written before a change still opened, and no
module but :mod:`ravis.run_folder` naming its files."""

import ast
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

import ravis
from ravis.memory import ArrayMemory, ShardedMemory
from ravis.run_folder import ExperimentFolder, RunFolder, RunFolderError

SRC = Path(__file__).parents[2] / "src" / "ravis"


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


def test_a_run_folder_from_before_the_config_moved_still_opens_and_serves_the_same(tiny_run, tmp_path, caplog):
    """A config.yaml written before MAM's classifier and training options left the ``mam``
    section is read with them moved (and says so), and the models serve what they served."""
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    for exp in config["experiments"]:  # as an earlier ravis wrote it
        classifier, train = exp.pop("classifier"), exp["train"]
        exp["mam"].update(classifier)
        for key in ("warm_start", "vote_weight_grid", "tune_posthoc"):
            exp["mam"][key] = train.pop(key)
    (old / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    RunFolder(old).finish()
    with caplog.at_level(logging.WARNING):
        cfg, _ = RunFolder(old).open()
    assert "mam.warm_start -> train.warm_start" in caplog.text
    assert cfg == RunFolder(tiny_run).load_config()
    images = [Image.new("RGB", (28, 28), (i * 40, 0, 0)) for i in range(3)]
    before, after = ravis.load(tiny_run).predict(images), ravis.load(old).predict(images)
    for a, b in zip(before, after):
        assert a["top5"] == b["top5"] and a["neighbors"] == b["neighbors"]


def _file_names() -> set[str]:
    """The names the run folder gives its files (its classes' upper-case constants; not the
    lock file, whose name every folder ravis writes shares)."""
    return {v for cls in (RunFolder, ExperimentFolder) for k, v in vars(cls).items()
            if k.isupper() and isinstance(v, str) and "." in v.lstrip(".")}


def test_no_module_but_run_folder_names_its_files():
    """Every reader and writer goes through RunFolder: a file name of the run folder as a
    string (or the tail of a path in one) in the code of any other module is a second owner
    of the format."""
    names = _file_names()
    assert {"serving.json", "predictions.npz", "results.json", "config.yaml"} <= names
    found = []
    for path in SRC.rglob("*.py"):
        if path.is_relative_to(SRC / "run_folder"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [f"{path.relative_to(SRC)}:{node.lineno} {n}" for n in names
                          if node.value == n or node.value.endswith("/" + n)]
    assert not found, found
