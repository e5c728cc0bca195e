"""The sharded on-disk format: reading back, global row ids, and refusing damaged shards."""

import json

import numpy as np
import pytest

from ravis.io import save_npy
from ravis.memory import ArrayMemory, Memory, MemoryMismatchError
from ravis.memory.sharded import (FORMAT, ShardedMemory, file_record, meta_table,
                                  save_manifest, shard_file, write_shard)


def make_memory(memdir, rows=(5, 0, 3), d=8, dv=4, dtype="float16"):
    """A memory of random unit keys in shards of ``rows`` rows, written as the builder does."""
    rng = np.random.default_rng(0)
    shards = []
    for i, n in enumerate(rows):
        name = f"{i:05d}"
        keys = rng.standard_normal((n, d)).astype(np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        values = rng.standard_normal((n, dv)).astype(np.float32)
        meta = meta_table([f"{name}/k{j}" for j in range(n)], [f"text {i}.{j}" for j in range(n)],
                          ["coll"] * n, [j % 2 for j in range(n)], [None] * n, [None] * n)
        files = write_shard(memdir, name, keys.astype(dtype), values.astype(dtype), meta)
        shards.append({"name": name, "input": f"in{i}.tar", "rows": n, "skipped": {},
                       "files": files})
    save_manifest(memdir, {"format": FORMAT, "key_encoder": "enc", "value_encoder": "txt",
                           "dim": d, "value_dim": dv, "dtype": dtype, "count": 0,
                           "class_names": ["a", "b"], "shards": shards, "failed_shards": []})


@pytest.fixture
def memdir(tmp_path):
    make_memory(tmp_path / "m")
    return tmp_path / "m"


def test_open_reads_shards_and_global_rows(memdir):
    mem = ShardedMemory.open(memdir, verify=True)
    assert (mem.count, mem.dim, mem.value_dim, mem.dtype) == (8, 8, 4, np.float16)
    assert mem.shard_names == ["00000", "00001", "00002"] and mem.shard_rows == [5, 0, 3]
    keys = mem.keys(2)
    assert isinstance(keys, np.memmap) and keys.shape == (3, 8) and keys.dtype == np.float16
    assert mem.meta(0).column("id").to_pylist()[1] == "00000/k1"
    batches = list(mem.iter_keys(batch_rows=2))
    assert [start for start, _ in batches] == [0, 2, 4, 5, 7]
    allkeys = np.concatenate([b for _, b in batches])
    assert allkeys.dtype == np.float32 and allkeys.shape == (8, 8)
    np.testing.assert_array_equal(allkeys[5:], mem.keys(2).astype(np.float32))
    assert mem.locate(5) == (2, 0) and mem.locate(4) == (0, 4)
    with pytest.raises(IndexError):
        mem.locate(8)


def test_from_memory_is_the_core_memory(memdir):
    mem = ArrayMemory.from_memory(ShardedMemory.open(memdir))
    assert isinstance(mem, ArrayMemory) and isinstance(mem, Memory) and len(mem) == 8
    assert mem.keys.dtype == np.float16  # the stored dtype
    assert mem.ids[5] == "00002/k0" and mem.texts[5] == "text 2.0"
    assert mem.labels.tolist() == [0, 1, 0, 1, 0, 0, 1, 0]
    np.testing.assert_allclose(np.linalg.norm(mem.keys, axis=1), 1, atol=2e-3)  # float16 keys
    assert mem.key_encoder == "enc" and mem.class_names == ["a", "b"]


def test_verify_catches_a_corrupted_shard(memdir):
    path = memdir / shard_file("00002", "values")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: same size, same header
    path.write_bytes(bytes(data))
    ShardedMemory.open(memdir)  # headers still agree: opening without verify is cheap
    with pytest.raises(MemoryMismatchError, match=r"00002\.values\.npy: checksum mismatch"):
        ShardedMemory.open(memdir).verify()
    with pytest.raises(MemoryMismatchError, match=r"00002\.values\.npy"):
        ShardedMemory.open(memdir, verify=True)
    with pytest.raises(MemoryMismatchError, match=r"00002\.values\.npy"):
        ArrayMemory.from_memory(ShardedMemory.open(memdir))  # an experiment never loads a damaged shard


def _rewrite(memdir, name, kind, array):
    """Replaces a shard file and fixes its manifest checksum (a consistent but wrong shard)."""
    save_npy(memdir / shard_file(name, kind), array)
    manifest = json.loads((memdir / "manifest.json").read_text())
    shard = next(s for s in manifest["shards"] if s["name"] == name)
    shard["files"][kind] = file_record(memdir, shard_file(name, kind))
    (memdir / "manifest.json").write_text(json.dumps(manifest))


def test_open_refuses_a_shard_of_another_dimension(memdir):
    _rewrite(memdir, "00002", "keys", np.zeros((3, 16), np.float16))
    with pytest.raises(MemoryMismatchError, match=r"00002\.keys\.npy: shape \(3, 16\)"):
        ShardedMemory.open(memdir)


def test_open_refuses_a_shard_of_another_dtype(memdir):
    _rewrite(memdir, "00000", "values", np.zeros((5, 4), np.float32))
    with pytest.raises(MemoryMismatchError, match=r"00000\.values\.npy: .*float32.*float16"):
        ShardedMemory.open(memdir)


def test_missing_shard_file_and_bad_row_count_are_named(memdir):
    (memdir / shard_file("00001", "meta")).unlink()
    with pytest.raises(MemoryMismatchError, match=r"00001\.meta\.parquet: missing"):
        ShardedMemory.open(memdir)


def test_meta_row_count_is_verified(tmp_path):
    make_memory(tmp_path / "m", rows=(2,))
    memdir = tmp_path / "m"
    meta = meta_table(["x"], ["t"], ["s"], [0], [None], [None])  # 1 row, manifest says 2
    import pyarrow.parquet as pq
    pq.write_table(meta, memdir / shard_file("00000", "meta"))
    manifest = json.loads((memdir / "manifest.json").read_text())
    manifest["shards"][0]["files"]["meta"] = file_record(memdir, shard_file("00000", "meta"))
    (memdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MemoryMismatchError, match=r"00000\.meta\.parquet: 1 rows, manifest says 2"):
        ShardedMemory.open(memdir, verify=True)


def test_not_a_memory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        ShardedMemory.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(MemoryMismatchError, match="format"):
        ShardedMemory.open(tmp_path)
