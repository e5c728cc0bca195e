"""The memory store: round trip, encoder mismatch, corruption named by file."""

import numpy as np
import pytest

from ravis.memory import Memory, MemoryMismatchError


def small_memory(d=8, dv=4, m=5) -> Memory:
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    return Memory(keys=keys / np.linalg.norm(keys, axis=1, keepdims=True),
                  values=rng.standard_normal((m, dv)).astype(np.float32),
                  labels=np.arange(m) % 2, texts=[f"t{i}" for i in range(m)],
                  ids=[f"id{i}" for i in range(m)], sources=["s"] * m,
                  key_encoder="enc-A", value_encoder="txt", class_names=["a", "b"])


def test_round_trip(tmp_path):
    mem = small_memory()
    mem.save(tmp_path / "m")
    back = Memory.load(tmp_path / "m")
    np.testing.assert_array_equal(back.keys, mem.keys)
    np.testing.assert_array_equal(back.values, mem.values)
    assert back.texts == mem.texts and back.ids == mem.ids and back.class_names == ["a", "b"]
    assert back.fingerprint == mem.fingerprint
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_query_encoder_mismatch_is_a_clear_error():
    mem = small_memory()
    mem.check_query_encoder("enc-A", 8)
    with pytest.raises(MemoryMismatchError, match="8-d"):
        mem.check_query_encoder("enc-A", 16)
    with pytest.raises(MemoryMismatchError, match="enc-B"):
        mem.check_query_encoder("enc-B", 8)


def test_corrupt_file_is_named(tmp_path):
    small_memory().save(tmp_path / "m")
    keys = np.load(tmp_path / "m" / "keys.npy")
    keys[0, 0] += 1
    np.save(tmp_path / "m" / "keys.npy", keys)
    with pytest.raises(MemoryMismatchError, match="keys.npy"):
        Memory.load(tmp_path / "m")


def test_lengths_must_agree():
    mem = small_memory()
    with pytest.raises(MemoryMismatchError, match="texts"):
        Memory(keys=mem.keys, values=mem.values, labels=mem.labels, texts=mem.texts[:2],
               ids=mem.ids, sources=mem.sources, key_encoder="e", value_encoder="v")
