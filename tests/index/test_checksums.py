"""Saved indexes are checksummed: a flipped byte, a truncated or missing file is refused by
name; verified files are not hashed again until they change; every backend declares the
same protocol members."""

import json
import logging
import os
import time

import numpy as np
import pytest

import ravis.io
from ravis.index import Index, IndexFileError, create_index, load_index
from ravis.index.base import STAMPS_NAME
from ravis.index.build import KeyShards, build_index
from ravis.index.multi import MultiIndex


def unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def backdate(folder, seconds=60):
    """Makes the files look written a while ago, as a built index is when it is opened: a
    file changed within the clock's granularity of its stamp could keep its mtime."""
    t = time.time_ns() - seconds * 10**9
    for f in folder.rglob("*"):
        if f.is_file():
            os.utime(f, ns=(t, t))


@pytest.fixture
def saved(tmp_path):
    """A faiss IVF index saved in RAM format (index.faiss only)."""
    x = unit(2000, 16, 0)
    index = create_index("faiss:IVF16,Flat", 16)
    index.train(x)
    index.add(x)
    index.set_search_params(nprobe=4)
    index.save(tmp_path / "ivf")
    return tmp_path / "ivf", x


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """An IVF index merged into on-disk inverted lists (index.faiss + index.ivfdata)."""
    x = unit(4000, 16, 1)
    out = tmp_path_factory.mktemp("ondisk")
    build_index([x[:2000], x[2000:]], out, factory="IVF16,Flat", target_recall=0.9, k=10,
                num_queries=100, progress=False)
    return out


def test_index_json_records_every_file(saved, on_disk):
    folder, _ = saved
    meta = json.loads((folder / "index.json").read_text())
    assert set(meta["files"]) == {"index.faiss"}
    record = meta["files"]["index.faiss"]
    assert record == {"sha256": ravis.io.sha256_file(folder / "index.faiss"),
                      "bytes": (folder / "index.faiss").stat().st_size}
    assert set(json.loads((on_disk / "index.json").read_text())["files"]) == {"index.faiss", "index.ivfdata"}


def test_flipped_byte_in_index_faiss_is_refused(saved):
    folder, _ = saved
    flip_byte(folder / "index.faiss")
    with pytest.raises(IndexFileError, match=r"index\.faiss: sha256 differs"):
        load_index(folder)


def test_flipped_byte_in_ivfdata_is_refused(on_disk, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(on_disk, folder)
    load_index(folder)  # intact
    flip_byte(folder / "index.ivfdata")
    with pytest.raises(IndexFileError, match=r"index\.ivfdata: sha256 differs"):
        load_index(folder, mmap=True)


@pytest.mark.parametrize("spec,name", [("exact", "xb.npy"), ("faiss-flat", "xb.npy"),
                                       ("faiss:IVF16,Flat", "index.faiss")])
def test_truncated_or_missing_file_is_refused(spec, name, tmp_path):
    x = unit(500, 16, 2)
    index = create_index(spec, 16)
    index.train(x)
    index.add(x)
    index.save(tmp_path)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IndexFileError, match=rf"{name}: \d+ bytes, index.json says \d+ \(truncated"):
        load_index(tmp_path)
    path.unlink()
    with pytest.raises(IndexFileError, match=rf"{name}: missing"):
        load_index(tmp_path)


def test_stamp_skips_rehash_until_the_file_changes(saved, monkeypatch):
    folder, x = saved
    backdate(folder)
    calls = []
    real = ravis.io.sha256_file
    monkeypatch.setattr(ravis.io, "sha256_file", lambda p: calls.append(p) or real(p))
    load_index(folder)
    assert len(calls) == 1 and (folder / STAMPS_NAME).is_file()
    D, I = load_index(folder).search(x[:5], 3)
    assert len(calls) == 1  # unchanged since it last hashed right: not read again
    np.testing.assert_array_equal(I[:, 0], np.arange(5))
    flip_byte(folder / "index.faiss")  # same size, new mtime
    with pytest.raises(IndexFileError, match="index.faiss"):
        load_index(folder)
    assert len(calls) == 2


def test_read_only_folder_rehashes_every_open(saved, monkeypatch):
    folder, _ = saved
    backdate(folder)

    def refuse(*a, **kw):
        raise PermissionError("read-only")

    calls = []
    real = ravis.io.sha256_file
    monkeypatch.setattr(ravis.io, "sha256_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(ravis.io, "save_json", refuse)
    load_index(folder)
    load_index(folder)
    assert len(calls) == 2 and not (folder / STAMPS_NAME).exists()


def test_index_without_checksums_loads_with_a_warning(saved, caplog):
    folder, x = saved
    meta = json.loads((folder / "index.json").read_text())
    del meta["files"]
    (folder / "index.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="ravis.index.base"):
        index = load_index(folder)
    assert "no checksums" in caplog.text and index.ntotal == len(x)


def test_rewriting_index_json_keeps_the_checksums(saved, monkeypatch):
    folder, _ = saved
    index = load_index(folder)
    calls = []
    monkeypatch.setattr("ravis.index.base.sha256_file", lambda p: calls.append(p) or "x")
    index.info = {"note": "retuned"}
    index.save_meta(folder)  # the index file did not change: it is not hashed again
    assert calls == []
    monkeypatch.undo()
    assert load_index(folder).info == {"note": "retuned"}


def test_scann_files_are_checksummed(tmp_path):
    pytest.importorskip("scann")
    x = unit(1000, 16, 3)
    index = create_index("scann:leaves=8", 16)
    index.add(x)
    index.save(tmp_path)
    files = json.loads((tmp_path / "index.json").read_text())["files"]
    assert files and all(name.startswith("scann/") for name in files)
    np.testing.assert_array_equal(load_index(tmp_path).search(x[:3], 5)[1], index.search(x[:3], 5)[1])
    biggest = max(files, key=lambda n: files[n]["bytes"])
    flip_byte(tmp_path / biggest)
    with pytest.raises(IndexFileError, match=biggest):
        load_index(tmp_path)


def every_backend():
    x = unit(300, 8, 4)
    out = {}
    for spec in ("exact", "faiss-flat", "faiss:IVF4,Flat", "scann:leaves=4"):
        if spec.startswith("scann"):
            pytest.importorskip("scann")
        index = create_index(spec, 8)
        index.train(x)
        index.add(x)
        out[spec] = index
    out["multi"] = MultiIndex([out["exact"], out["faiss-flat"]])
    return out, x


def test_every_backend_declares_the_protocol():
    indexes, x = every_backend()
    for spec, index in indexes.items():
        assert isinstance(index, Index), spec
        assert index.is_trained and isinstance(index.info, dict) and isinstance(index.search_params, dict)
    for spec in ("exact", "faiss-flat", "multi"):
        with pytest.raises(ValueError, match="nprobe"):
            indexes[spec].set_search_params(nprobe=4)
        assert indexes[spec].search_params == {}
    with pytest.raises(ValueError, match="bogus"):
        indexes["faiss:IVF4,Flat"].set_search_params(bogus=1)
    with pytest.raises(ValueError, match="bogus"):
        indexes["scann:leaves=4"].set_search_params(bogus=1)


def test_vectors_are_a_loader_argument(on_disk):
    keys = KeyShards([unit(4000, 16, 1)])
    index = load_index(on_disk, vectors=keys, mmap=True)
    assert index.vectors is keys
    np.testing.assert_array_equal(index.reconstruct(np.array([3, 3999])), keys(np.array([3, 3999])))
    assert index.info["tuning"]["target_recall"] == 0.9  # info comes from index.json
