"""Every shipped preset loads and validates; each paper preset's tiny counterpart runs."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ravis.cli import main
from ravis.config import ConfigError, RunConfig, load_preset
from ravis.io import load_json

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
PAPER_PRESETS = ["imagenet_lt", "places_lt", "webvision", "inat2021_mini"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def test_there_are_presets():
    names = {p.stem for p in CONFIGS}
    assert {"demo", "tiny", *PAPER_PRESETS} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_preset_loads_and_validates(path):
    cfg = load_preset(path)
    assert isinstance(cfg, RunConfig) and cfg.experiments
    assert path.read_text().startswith("# "), "a preset starts with the command that runs it"
    assert "ravis " in path.read_text().splitlines()[0]


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_use_the_paper_recipe(name):
    cfg = load_preset(Path(__file__).parents[2] / "configs" / f"{name}.yaml")
    exp = cfg.experiments[0]
    assert cfg.recipe == "paper"
    assert (exp.train.lr, exp.train.weight_decay, exp.train.batch_size, exp.train.epochs) == (1e-3, 0.2, 512, 10)
    assert (exp.train.warmup_epochs, exp.train.label_smoothing, exp.retrieval.k, exp.mam.num_layers) == (1, 0.1, 100, 8)
    assert not (exp.mam.similarity_init or exp.mam.learn_temperature)


def test_bad_override_is_a_clear_error():
    with pytest.raises(ConfigError, match="train.lr"):
        load_preset(Path(__file__).parents[2] / "configs" / "tiny.yaml", ["train.lr=-1"])
    with pytest.raises(ConfigError, match="unknown keys"):
        load_preset(Path(__file__).parents[2] / "configs" / "tiny.yaml", ["train.lrr=1"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr must be a number, got 'abc'"),
    ("train.epochs=2.5", "train.epochs must be an integer, got 2.5"),
    ("train.epochs=true", "train.epochs must be an integer, got True"),
    ("classifier.label_evidence=1", "classifier.label_evidence must be true or false, got 1"),
    ("retrieval.vote_ks=[10, x]", r"retrieval.vote_ks.1 must be an integer, got 'x'"),
    ("encoder=[a]", "encoder must be a string"),
])
def test_a_value_of_the_wrong_type_is_named(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_preset(Path(__file__).parents[2] / "configs" / "tiny.yaml", [override])


def test_numbers_are_read_as_their_fields_want():
    cfg = load_preset(Path(__file__).parents[2] / "configs" / "tiny.yaml",
                      ["train.lr=1", "train.epochs=3", "train.tau=auto", "train.posthoc_tau=0"])
    train = cfg.experiments[0].train
    assert isinstance(train.lr, float) and train.epochs == 3 and train.tau == "auto"
    assert train.posthoc_tau == 0.0


def make_lt_split(root: Path) -> tuple[Path, Path]:
    """A tiny long-tailed image set in the standard split-file format."""
    rng = np.random.default_rng(0)
    lines = {"train": [], "test": []}
    for label, (name, rgb) in enumerate(COLOURS.items()):
        for split, n in (("train", [14, 7, 3][label]), ("test", 4)):
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
                rel = f"{split}/{name}/{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / rel)
                lines[split].append(f"{rel} {label}")
    for split in lines:
        (root / f"{split}.txt").write_text("\n".join(lines[split]) + "\n")
    return root / "train.txt", root / "test.txt"


def tiny_encoder(tmp_path: Path) -> str:
    """A tiny randomly initialised timm model saved to disk, when timm is installed."""
    if importlib.util.find_spec("timm") is None:
        return "efficientnet_lite0"
    import torch
    from safetensors.torch import save_file

    from ravis.encoders.timm_adapter import import_without_torchvision

    torch.manual_seed(0)
    model = import_without_torchvision("timm").create_model("resnet10t", num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "r.safetensors"))
    return f"timm:resnet10t@{tmp_path / 'r.safetensors'}"


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_tiny_counterpart_runs(name, tmp_path, ravis_cache, capsys):
    train, test = make_lt_split(tmp_path / "data")
    encoder = tiny_encoder(tmp_path) if name == "webvision" else "efficientnet_lite0"
    preset = Path(__file__).parents[2] / "configs" / f"{name}.yaml"
    out = tmp_path / "run"
    rc = main(["run", "-c", str(preset), "--out", str(out), "--quiet", "--cache", str(ravis_cache),
               "--set", f"data.dataset=lt-split:{tmp_path / 'data'}:{train}:{test}",
               "--set", f"encoder={encoder}", "--set", "text_encoder=minilm",
               "--set", "retrieval.k=8", "--set", "retrieval.vote_ks=[2,4,8]",
               "--set", "retrieval.k_curve=[2,8]", "--set", "retrieval.rac_texts=4",
               "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "mam.num_layers=2"])
    assert rc == 0, capsys.readouterr().err
    results = load_json(out / "results.json")
    exp = results["experiments"][0]
    assert exp["class_counts"] == [14, 7, 3]
    assert set(exp["methods"]) == {"linear", "mlp", "mean_knn", "mam", "rac", "knn_vote"}
    for m in exp["methods"].values():
        assert 0.0 <= m["top1"] <= 1.0


def test_unset_data_variable_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    preset = Path(__file__).parents[2] / "configs" / "imagenet_lt.yaml"
    rc = main(["run", "-c", str(preset), "--out", str(tmp_path / "o"), "--quiet",
               "--cache", str(tmp_path / "c")])
    assert rc == 2
    assert "IMAGENET_ROOT" in capsys.readouterr().err


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_ft_preset_is_its_paper_preset_with_the_encoder_fine_tuned(name):
    import dataclasses

    configs = Path(__file__).parents[2] / "configs"
    base, tuned = load_preset(configs / f"{name}.yaml"), load_preset(configs / f"{name}_ft.yaml")
    b, t = base.experiments[0], tuned.experiments[0]
    assert t.name == f"{b.name}+ft" and t.train.finetune_encoder and not b.train.finetune_encoder
    assert dataclasses.replace(t, name=b.name, train=b.train) == b
    assert dataclasses.replace(t.train, finetune_encoder=False, finetune_batch_size=b.train.finetune_batch_size) == b.train
    assert (tuned.encoder, tuned.text_encoder, tuned.recipe) == (base.encoder, base.text_encoder, base.recipe)


def test_tiny_ft_counterpart_runs_and_is_not_served_silently(tmp_path, ravis_cache, capsys):
    from ravis.predictor import Predictor
    from ravis.run_folder import RunFolderError

    train, test = make_lt_split(tmp_path / "data")
    preset = Path(__file__).parents[2] / "configs" / "imagenet_lt_ft.yaml"
    out = tmp_path / "run"
    rc = main(["run", "-c", str(preset), "--out", str(out), "--quiet", "--cache", str(ravis_cache),
               "--set", f"data.dataset=lt-split:{tmp_path / 'data'}:{train}:{test}",
               "--set", "encoder=efficientnet_lite0:64", "--set", "text_encoder=minilm",
               "--set", "methods=[linear, mam, knn_vote]", "--set", "retrieval.k=8",
               "--set", "retrieval.vote_ks=[2,4,8]", "--set", "retrieval.k_curve=[2,8]",
               "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "mam.num_layers=2",
               "--set", "retrieval.rac_texts=4",
               "--set", "train.finetune_epochs=1", "--set", "train.finetune_batch_size=8",
               # no validation split: the fine-tuned weights are kept (no epoch 0 to fall back on)
               "--set", "train.val_fraction=0", "--set", "train.posthoc_tau=0", "--set", "train.tau=1"])
    assert rc == 0, capsys.readouterr().err
    exp = load_json(out / "results.json")["experiments"][0]
    for m in ("linear", "mam"):
        tuned = exp["details"][m]["finetune"]
        assert tuned["keys"] == "frozen" and tuned["epochs_run"] == 1 and tuned["steps"] == 3
        assert tuned["best_epoch"] is None  # the last epoch's weights
        assert (out / "imagenet-lt+ft" / f"{m}.encoder.safetensors").exists()
    with np.load(out / "imagenet-lt+ft" / "predictions.npz") as f:
        assert "neighbors_mam" not in f  # frozen keys: MAM read the neighbours every method did
    with pytest.raises(RunFolderError, match="fine-tuned encoder"):
        Predictor.load(out, method="mam", cache_dir=ravis_cache)
    from types import SimpleNamespace

    from ravis.run_folder import RunFolder
    from ravis.serve.models import ServedModels

    cfg = RunFolder(out).load_config()
    started = SimpleNamespace(config=cfg, experiment=cfg.experiments[0], method="mean_knn")
    served = ServedModels(started, run_dir=out)
    assert {"experiment": "imagenet-lt+ft", "method": "mam"} not in served.choices()  # nor offered by the server


def test_keys_that_moved_are_read_under_their_new_names(caplog):
    """MAM's classifier and training options left the ``mam`` section; presets, overrides
    and saved configs that name them there are read as if they named the new keys (a new
    key given too wins), with a warning saying how to rewrite them."""
    import logging

    from ravis.config import resolve

    tree = {"mam": {"warm_start": False, "hidden_layer": False, "num_layers": 2},
            "experiments": [{"name": "a", "mam": {"label_evidence": False}},
                            {"name": "b", "classifier": {"balance_votes": True}, "mam": {"balance_votes": False}}]}
    with caplog.at_level(logging.WARNING):
        cfg = resolve(tree, ["mam.tune_posthoc=true", "experiments.1.mam.vote_weight_grid=[0.5]"])
    a, b = cfg.experiments
    assert a.mam.num_layers == 2 and not a.train.warm_start and not a.classifier.hidden_layer
    assert not a.classifier.label_evidence and b.classifier.label_evidence
    assert b.classifier.balance_votes  # the new key wins over the old one
    assert a.train.tune_posthoc and b.train.tune_posthoc
    assert b.train.vote_weight_grid == [0.5] and a.train.vote_weight_grid == [0.1, 0.25, 0.5, 1.0, 2.0]
    assert "mam.warm_start -> train.warm_start" in caplog.text
    assert "mam.label_evidence -> classifier.label_evidence" in caplog.text
    with pytest.raises(ConfigError, match="unknown keys \\['label_evidence'\\]"):
        resolve({"experiments": [{"name": "a", "train": {"label_evidence": True}}]})
