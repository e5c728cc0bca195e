"""``ravis predict RUN_DIR IMAGE...``: the run folder first, as ``serve`` and ``report`` take it
(``--run`` still works), and refusals that list the choices before anything loads."""

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from ravis.cli import main

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "query.png"
    Image.new("L", (28, 28), 128).save(path)
    return path


@pytest.fixture
def two_experiments(tmp_path) -> Path:
    """A folder with only the config of a run of two experiments: the choices are checked
    from the config alone, so a refusal needs no trained run."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["experiments"].append(dict(cfg["experiments"][0], name="second"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def test_run_folder_first_or_as_run_option(tiny_run, image, capsys):
    assert main(["predict", str(tiny_run), str(image), str(image), "--json", "--neighbors", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["predict", "--run", str(tiny_run), str(image), "--json", "--neighbors", "3"]) == 0
    alias = json.loads(capsys.readouterr().out)
    assert len(first) == 2 and len(alias) == 1 and all(o["image"] == str(image) for o in first + alias)
    assert alias[0]["top5"] == first[0]["top5"]


def test_text_names_the_model_that_answered(tiny_run, image, capsys):
    assert main(["predict", str(tiny_run), str(image)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("experiment tiny-fmnist, method mam") and lines[1] == str(image)


def test_no_image_is_refused(tiny_run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tiny_run)])
    assert e.value.code == 2 and "the following arguments are required: IMAGE" in capsys.readouterr().err


def test_options_may_come_between_the_run_folder_and_the_images(tiny_run, image, capsys):
    """As the README writes it: `ravis predict RUN --experiment NAME IMAGE`."""
    assert main(["predict", str(tiny_run), "--experiment", "tiny-fmnist", str(image), "--json"]) == 0
    assert main(["predict", "--json", "--run", str(tiny_run), str(image), "--experiment", "tiny-fmnist"]) == 0


def test_several_experiments_need_one_named(two_experiments, image, capsys):
    assert main(["predict", str(two_experiments), str(image)]) == 2
    err = capsys.readouterr().err
    assert "has 2 experiments: choose one with --experiment" in err and "['tiny-fmnist', 'second']" in err
    assert main(["predict", str(two_experiments), str(image), "--experiment", "nope"]) == 2
    assert "no experiment 'nope'; it has ['tiny-fmnist', 'second']" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["predict", "serve"])
@pytest.mark.parametrize("method, why", [("rac", "cannot be served"), ("knn_vote", "cannot be served"),
                                         ("nope", "is not a method")])
def test_a_method_it_cannot_serve_is_refused_listing_those_it_can(two_experiments, image, capsys, verb,
                                                                   method, why):
    images = [str(image)] if verb == "predict" else []
    argv = [verb, str(two_experiments), *images, "--experiment", "second", "--method", method]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--method '{method}' {why}" in err and "; choose from ['linear', 'mlp', 'mean_knn', 'mam']" in err
    assert "experiment 'second'" in err


def test_a_method_the_run_did_not_train_is_refused(two_experiments, image, capsys):
    cfg_path = two_experiments / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["experiments"][1]["methods"] = ["linear", "rac"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["predict", str(two_experiments), str(image), "--experiment", "second"]) == 2
    assert "--method 'mam' was not trained in this run; choose from ['linear']" in capsys.readouterr().err
