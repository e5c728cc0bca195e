import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def ravis_cache(tmp_path_factory):
    """One cache per test session: the ONNX export and embeddings are made once."""
    path = tmp_path_factory.mktemp("ravis-cache")
    old = os.environ.get("RAVIS_CACHE")
    os.environ["RAVIS_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RAVIS_CACHE", None)
    else:
        os.environ["RAVIS_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, ravis_cache):
    """One trained tiny run (configs/tiny.yaml) shared by the serve and report tests."""
    from pathlib import Path

    from ravis.cli import main

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    tiny = Path(__file__).parents[1] / "configs" / "tiny.yaml"
    assert main(["run", "-c", str(tiny), "--out", str(out), "--quiet", "--cache", str(ravis_cache)]) == 0
    return out
