"""create_index / load_index: registry, factory strings, save and load."""

import json

import numpy as np
import pytest

from ravis.index import INDEXES, Index, create_index, load_index
from ravis.io import sha256_file


@pytest.mark.parametrize("spec", ["exact", "faiss-flat"])
def test_save_load_roundtrip(spec, tmp_path):
    rng = np.random.default_rng(0)
    xb, xq = rng.standard_normal((200, 24)).astype(np.float32), rng.standard_normal((10, 24)).astype(np.float32)
    index = create_index(spec, 24)
    assert isinstance(index, Index)
    index.add(xb)
    index.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta == {"spec": spec, "d": 24, "ntotal": 200, "info": {},
                    "files": {"xb.npy": {"sha256": sha256_file(tmp_path / "ix" / "xb.npy"),
                                         "bytes": (tmp_path / "ix" / "xb.npy").stat().st_size}}}
    loaded = load_index(tmp_path / "ix")
    assert type(loaded) is type(index) and loaded.d == 24 and loaded.ntotal == 200
    for a, b in zip(index.search(xq, 7), loaded.search(xq, 7)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.reconstruct(np.arange(200)), xb)


def test_unknown_spec_and_options():
    assert {"exact", "faiss-flat"} <= set(INDEXES)
    with pytest.raises(ValueError, match="unknown index 'IVF4096,PQ32'"):
        create_index("IVF4096,PQ32", 8)
    with pytest.raises(ValueError, match="takes no options"):
        create_index("exact:fast", 8)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        load_index(tmp_path)
    index = create_index("exact", 4)
    index.add(np.ones((3, 4), np.float32))
    index.save(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"spec": "exact", "d": 4, "ntotal": 5}))
    with pytest.raises(ValueError, match="xb.npy.*do not match"):
        load_index(tmp_path)
