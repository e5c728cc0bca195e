"""The evaluation cache: a warm rerun reads each method's finished evaluation instead of
predicting again, gives the same results and files, and never serves a damaged or stale entry."""

import dataclasses
import importlib
import logging
import shutil
from pathlib import Path

import pytest

from ravis.config import load_preset
from ravis.experiment import evaluation_cache

run_module = importlib.import_module("ravis.experiment.run")  # the package exports run()

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


def _strip(d):
    """results.json without the "cached" flags, which say how a number was obtained."""
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if k != "cached"}
    if isinstance(d, list):
        return [_strip(x) for x in d]
    return d


@pytest.fixture
def cache(tmp_path, ravis_cache, tiny_run):
    """A cache with the embeddings warm (the session's tiny run made them) and nothing
    trained or evaluated."""
    path = tmp_path / "cache"
    shutil.copytree(ravis_cache / "embeddings", path / "embeddings")
    return path


def _run(cfg, out, cache):
    return run_module.run(cfg, out, cache, progress=False, echo=lambda s: None)


def test_a_warm_rerun_predicts_nothing_and_matches_the_cold_run(tmp_path, cache, monkeypatch):
    cfg = load_preset(TINY)
    cold = _run(cfg, tmp_path / "cold", cache)
    entries = sorted((cache / "evaluations").glob("*.safetensors"))
    assert len(entries) == len(cfg.experiments[0].methods)  # one per method, the vote too

    def refuse(*a, **kw):
        raise AssertionError("a warm rerun trained, predicted or voted again")

    monkeypatch.setattr(run_module, "train_method", refuse)
    monkeypatch.setattr(run_module, "vote_result", refuse)
    warm = _run(cfg, tmp_path / "warm", cache)
    assert _strip(warm) == _strip(cold)
    assert all(d.get("cached") for d in warm["experiments"][0]["details"].values())
    for name in ["predictions.npz", *(f"{m}.safetensors" for m in cfg.experiments[0].methods
                                      if m != "knn_vote")]:
        assert (tmp_path / "warm" / "tiny-fmnist" / name).read_bytes() == \
               (tmp_path / "cold" / "tiny-fmnist" / name).read_bytes(), name
    # the report reads the curves back with the same (int) keys
    curve = warm["experiments"][0]["details"]["mam"]["accuracy_vs_k"]
    assert all(isinstance(k, int) for k in curve)


def test_a_changed_setting_or_code_evaluates_again(tmp_path, cache, monkeypatch):
    cfg = load_preset(TINY)
    cfg = dataclasses.replace(cfg, experiments=[dataclasses.replace(
        cfg.experiments[0], methods=["linear", "knn_vote"])])
    _run(cfg, tmp_path / "a", cache)
    exp = cfg.experiments[0]
    # a post-hoc setting that the model key leaves out still changes the evaluation key
    other = dataclasses.replace(exp, train=dataclasses.replace(exp.train, select_margin=exp.train.select_margin + 1))
    _run(dataclasses.replace(cfg, experiments=[other]), tmp_path / "b", cache)
    assert len(list((cache / "evaluations").glob("*.safetensors"))) == 4
    # so does the ravis source: an edited evaluation never reads an old entry
    monkeypatch.setattr(evaluation_cache, "code_version", lambda: "edited")
    calls = []
    real = run_module.vote_result
    monkeypatch.setattr(run_module, "vote_result", lambda prep: calls.append(1) or real(prep))
    _run(cfg, tmp_path / "c", cache)
    assert calls == [1]


def test_a_damaged_entry_is_named_and_evaluated_again(tmp_path, cache, caplog):
    cfg = load_preset(TINY)
    cfg = dataclasses.replace(cfg, experiments=[dataclasses.replace(cfg.experiments[0], methods=["mlp"])])
    first = _run(cfg, tmp_path / "a", cache)
    (entry,) = (cache / "evaluations").glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    data[-3] ^= 0xFF
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = _run(cfg, tmp_path / "b", cache)
    assert entry.name in caplog.text and "recomputing" in caplog.text
    assert _strip(again) == _strip(first)
    assert again["experiments"][0]["details"]["mlp"]["cached"] is True  # the weights were
    assert evaluation_cache.is_sealed(entry)  # written again, whole


def test_fine_tuning_is_not_cached(tmp_path, cache, monkeypatch):
    """Its result holds the fine-tuned network, which the entry does not store."""
    cfg = load_preset(TINY)
    exp = cfg.experiments[0]
    exp = dataclasses.replace(exp, methods=["knn_vote"],
                              train=dataclasses.replace(exp.train, finetune_encoder=True))
    _run(dataclasses.replace(cfg, experiments=[exp]), tmp_path / "a", cache)
    assert not list((cache / "evaluations").glob("*.safetensors"))
