"""The memory protocol: in RAM, on disk and composed give the same rows; the in-RAM memory
saves into the one on-disk format; encoder mismatch and corruption are named."""

import numpy as np
import pytest

from ravis.memory import ArrayMemory, ComposedMemory, Memory, MemoryMismatchError, ShardedMemory, compose


def small_memory(d=8, dv=4, m=5, seed=0, classes=("a", "b"), prefix="id") -> ArrayMemory:
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    return ArrayMemory(keys=keys / np.linalg.norm(keys, axis=1, keepdims=True),
                       values=rng.standard_normal((m, dv)).astype(np.float32),
                       labels=np.arange(m) % 2, texts=[f"t{i}" for i in range(m)],
                       ids=[f"{prefix}{i}" for i in range(m)], sources=["s"] * m,
                       key_encoder="enc-A", value_encoder="txt", class_names=list(classes),
                       thumbnails=[bytes([i]) for i in range(m)])


def test_every_memory_is_the_protocol(tmp_path):
    mem = small_memory()
    assert isinstance(mem, Memory)
    assert isinstance(mem.save(tmp_path / "m"), Memory)
    assert isinstance(compose([("train", mem)], ["a", "b"]), Memory)


def test_round_trip_through_the_on_disk_format(tmp_path):
    mem = small_memory()
    back = mem.save(tmp_path / "m")
    assert isinstance(back, ShardedMemory) and back.dtype == np.float32
    rows = np.array([4, 0, 2, 2])
    np.testing.assert_array_equal(back.keys_at(rows), mem.keys_at(rows))
    np.testing.assert_array_equal(back.values_at(rows), mem.values_at(rows))
    np.testing.assert_array_equal(back.labels_at(rows), mem.labels_at(rows))
    cols = ["id", "text", "source", "thumbnail"]
    assert back.meta_at(rows, cols) == mem.meta_at(rows, cols)
    assert back.rows_of(["id3", "nope", "id0"]).tolist() == mem.rows_of(["id3", "nope", "id0"]).tolist() == [3, -1, 0]
    assert back.class_names == ["a", "b"] and back.key_encoder == "enc-A"
    assert not list((tmp_path / "m").rglob("*.tmp"))
    half = mem.save(tmp_path / "h", dtype="float16")
    assert half.keys_at([1]).dtype == np.float16


def test_composed_memory_is_a_view(tmp_path):
    a = small_memory(m=5)
    b = small_memory(m=7, seed=1, classes=("b", "c"), prefix="w").save(tmp_path / "web")
    mem = compose([("train", a), (str(tmp_path / "web"), b)], ["a", "b"])
    assert isinstance(mem, ComposedMemory) and len(mem) == 12
    rows = np.array([11, 0, 5, 4, 6])
    want_keys = np.concatenate([a.keys, b.keys_at(np.arange(7))])[rows]
    np.testing.assert_array_equal(mem.keys_at(rows), want_keys)
    # web labels: "b" -> 1, "c" is not an experiment class -> -1
    want_labels = np.concatenate([a.labels, np.where(b.labels_at(np.arange(7)) == 0, 1, -1)])[rows]
    np.testing.assert_array_equal(mem.labels_at(rows), want_labels)
    assert mem.meta_at([0, 5], ["id"])["id"] == ["id0", "web:w0"]  # later parts prefixed
    assert mem.rows_of(["web:w6", "id4", "w6", "web:id4"]).tolist() == [11, 4, -1, -1]
    assert [block.shape[0] for block in mem.key_blocks()] == [5, 7]
    assert mem.digest != compose([("train", a)], ["a", "b"]).digest


def test_composed_parts_must_share_embedding_spaces(tmp_path):
    a = small_memory()
    with pytest.raises(MemoryMismatchError, match="key dimension"):
        compose([("train", a), ("web", small_memory(d=16))], ["a", "b"])


def test_query_encoder_mismatch_is_a_clear_error():
    mem = small_memory()
    mem.check_query_encoder("enc-A", 8)
    with pytest.raises(MemoryMismatchError, match="8-d"):
        mem.check_query_encoder("enc-A", 16)
    with pytest.raises(MemoryMismatchError, match="enc-B"):
        mem.check_query_encoder("enc-B", 8)


def test_corrupt_file_is_named(tmp_path):
    small_memory().save(tmp_path / "m")
    path = tmp_path / "m" / "shards" / "00000.keys.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    ShardedMemory.open(tmp_path / "m")  # headers and sizes agree: a cheap open passes...
    with pytest.raises(MemoryMismatchError, match="00000.keys.npy: checksum mismatch"):
        ShardedMemory.open(tmp_path / "m", verify=True)  # ...a verified one does not


def test_verified_open_hashes_each_file_once(tmp_path, monkeypatch):
    import ravis.io

    import os
    import time

    small_memory().save(tmp_path / "m")
    past = time.time_ns() - 10**10  # files this fresh are never stamped (mtime resolution)
    for f in (tmp_path / "m" / "shards").iterdir():
        os.utime(f, ns=(past, past))
    calls = []
    real = ravis.io.sha256_file
    monkeypatch.setattr(ravis.io, "sha256_file", lambda p: calls.append(p) or real(p))
    ShardedMemory.open(tmp_path / "m", verify=True)
    assert len(calls) == 3
    ShardedMemory.open(tmp_path / "m", verify=True)
    assert len(calls) == 3  # unchanged files are not hashed again
    ShardedMemory.open(tmp_path / "m").verify()
    assert len(calls) == 6  # a full verify trusts no stamp
    path = tmp_path / "m" / "shards" / "00000.values.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(MemoryMismatchError, match="00000.values.npy"):
        ShardedMemory.open(tmp_path / "m", verify=True)


def test_lengths_must_agree():
    mem = small_memory()
    with pytest.raises(MemoryMismatchError, match="texts"):
        ArrayMemory(keys=mem.keys, values=mem.values, labels=mem.labels, texts=mem.texts[:2],
                    ids=mem.ids, sources=mem.sources, key_encoder="e", value_encoder="v")
