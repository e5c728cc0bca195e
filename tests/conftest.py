import os
import random

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from shard_data import good_sample, make_image, write_tar

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


# Tiny image-text collections in the shapes img2dataset and parquet exports take, with the
# faults web data has: duplicate keys, missing captions, truncated and undecodable images,
# empty and unreadable shards (tests/shard_data.py writes them).


@pytest.fixture(scope="session")
def wds_dir(tmp_path_factory) -> Path:
    """shards/{00000..00004}.tar: 16 good samples in all, plus one of each fault."""
    d = tmp_path_factory.mktemp("wds")
    write_tar(d / "00000.tar", [good_sample(f"0000{i}", i, ("jpg", "png", "webp")[i % 3])
                                for i in range(6)])
    truncated = make_image(99)
    write_tar(d / "00001.tar", [
        good_sample("10000", 10), good_sample("10001", 11),
        ("10002", {"jpg": make_image(12)}),  # missing caption
        ("10003", {"jpg": truncated[:len(truncated) // 2], "txt": b"cut off"}),  # truncated
        ("10004", {"jpg": b"not an image at all", "txt": b"garbage"}),  # undecodable
        good_sample("10000", 13),  # duplicate key (the first one wins)
        good_sample("10005", 14), good_sample("10006", 15)])
    write_tar(d / "00002.tar", [])  # empty
    (d / "00003.tar").write_text("this is not a tar file\n")  # unreadable
    write_tar(d / "00004.tar", [good_sample(f"4000{i}", 40 + i) for i in range(6)])
    return d


@pytest.fixture(scope="session")
def parquet_dir(tmp_path_factory) -> Path:
    """bytes.parquet (image bytes) and paths.parquet (relative image paths), 4 rows each."""
    d = tmp_path_factory.mktemp("pq")
    (d / "img").mkdir()
    pq.write_table(pa.table({"key": [f"b{i}" for i in range(4)],
                             "jpg": [make_image(60 + i) for i in range(4)],
                             "caption": [f"bytes picture {i}" for i in range(3)] + [None]}),
                   d / "bytes.parquet")
    for i in range(4):
        (d / "img" / f"p{i}.png").write_bytes(make_image(70 + i, "PNG"))
    pq.write_table(pa.table({"image_path": [f"img/p{i}.png" for i in range(4)],
                             "text": [f"path picture {i}" for i in range(4)]}),
                   d / "paths.parquet")
    return d
