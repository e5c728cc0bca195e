"""Building sharded memories with the real default encoders: contents against the encoders
run directly, the pipelined local engine against one shard at a time and the Ray engine
against the local one byte for byte (with a worker killed mid-shard), errors on the
pipeline's threads, resume after an interruption, appending, and the CLI."""

import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ravis.cli import main
from ravis.data import BadImageError
from ravis.memory import MemoryMismatchError
from ravis.config import MemoryBuildConfig
from ravis.memory.shard_build import (add_shards, build_shard, build_shards,
                                      build_sharded_memory)
from ravis.memory.store import ArrayMemory
from ravis.memory.sharded import ShardedMemory, load_manifest, shard_file
from ravis.data.images import open_image
from ravis.data.sources import InputShard, ShardReadError, SourceError, resolve_sources

FAULTS = {"bad_image": 2, "duplicate_key": 1, "missing_caption": 2}


def sources(wds_dir, parquet_dir):
    return [f"wds:{wds_dir}/{{00000..00004}}.tar", f"parquet:{parquet_dir}/*.parquet"]


def all_bytes(memdir: Path) -> dict[str, bytes]:
    """Every file of a memory by relative path (temporary files would show up too), but the
    stamps of files already verified, which opening with verify=True may leave (a cache)."""
    return {p.relative_to(memdir).as_posix(): p.read_bytes()
            for p in sorted(memdir.rglob("*")) if p.is_file() and p.name != ".verified.json"}


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ravis-")]


@pytest.fixture(scope="session")
def reference(tmp_path_factory, wds_dir, parquet_dir, ravis_cache):
    """An uninterrupted local build of the fixture collections."""
    out = tmp_path_factory.mktemp("ref") / "mem"
    build_sharded_memory(sources(wds_dir, parquet_dir), out, progress=False)
    return out


def test_build_contents(reference, wds_dir):
    mem = ShardedMemory.open(reference, verify=True)
    m = mem.manifest
    assert mem.shard_names == ["00000", "00001", "00002", "00004", "00005", "00006"]
    assert mem.shard_rows == [6, 4, 0, 6, 3, 4] and mem.count == 23
    assert m["skipped"] == FAULTS and m["shards"][1]["skipped"] == {
        "bad_image": 2, "duplicate_key": 1, "missing_caption": 1}
    assert [f["input"] for f in m["failed_shards"]] == [str(wds_dir / "00003.tar")]
    assert "00003.tar: cannot read tar shard" in m["failed_shards"][0]["error"]
    assert (mem.dim, mem.value_dim, mem.dtype) == (1280, 384, np.float16)
    assert not [p for p in (reference / "shards").iterdir() if p.name.endswith(".tmp")]
    memory = ArrayMemory.from_memory(mem)
    assert len(set(memory.ids)) == 23 and memory.ids[6] == "00001/10000"
    assert memory.texts[6] == "a picture number 10" and set(memory.labels) == {-1}
    np.testing.assert_allclose(np.linalg.norm(memory.keys, axis=1), 1, atol=2e-3)
    thumb = mem.meta(0).column("thumbnail")[0].as_py()
    assert Image.open(__import__("io").BytesIO(thumb)).size == (64, 48)  # 96x72, longer side 64


def test_keys_and_values_are_the_encoders_outputs(reference, wds_dir):
    """Against the encoders called directly on the same images and captions."""
    from ravis.encoders import create_image_encoder, create_text_encoder
    from ravis.data.sources import read_rows, resolve_sources

    mem = ShardedMemory.open(reference)
    rows = read_rows(resolve_sources(str(wds_dir / "00000.tar"))[0][0]).rows
    image_encoder = create_image_encoder("efficientnet_lite0")
    pixels = np.stack([image_encoder.preprocess(open_image(r.image, where=r.key)) for r in rows])
    want_keys = image_encoder.encode_pixels(pixels)
    want_values = create_text_encoder("minilm").encode_texts([r.text for r in rows])
    np.testing.assert_allclose(mem.keys(0).astype(np.float32), want_keys, atol=1e-3)
    np.testing.assert_allclose(mem.values(0).astype(np.float32), want_values, atol=1e-3)
    assert mem.manifest["key_encoder"] == image_encoder.fingerprint()


def test_strict_build_names_the_problem(tmp_path, wds_dir, ravis_cache):
    with pytest.raises(SourceError, match=r"00001\.tar: sample '10002': missing caption"):
        build_sharded_memory(f"wds:{wds_dir}/00001.tar", tmp_path / "m", strict=True,
                             progress=False)


# ---------------------------------------------------------------------------------------------
# The pipeline


def test_pipelined_build_matches_one_shard_at_a_time(tmp_path, reference, wds_dir,
                                                     parquet_dir):
    """The local engine's one pipeline over every shard against build_shard on each alone."""
    out = tmp_path / "mem"
    build_sharded_memory(sources(wds_dir, parquet_dir), out, progress=False,
                         shard_builder=lambda *args: build_shard(*args))
    assert all_bytes(out) == all_bytes(reference)


@pytest.mark.parametrize("second, error, message", [
    ({"bad": b"not an image at all"}, BadImageError, r"00001\.tar: bad: .*not an image PIL can read"),
    (None, ShardReadError, r"00001\.tar: cannot read tar shard"),
])
def test_strict_error_on_a_pipeline_thread(tmp_path, wds_dir, second, error, message,
                                           ravis_cache):
    """Raised as it was before the pipeline (naming the file), on the calling thread, after
    the shard before it is recorded; no thread of the pipeline is left behind."""
    from shard_data import good_sample, write_tar

    d = tmp_path / "tars"
    d.mkdir()
    (d / "00000.tar").write_bytes((wds_dir / "00000.tar").read_bytes())
    if second is None:
        (d / "00001.tar").write_text("not a tar\n")
    else:
        write_tar(d / "00001.tar", [good_sample("good", 1)] + [
            (key, {"jpg": data, "txt": b"a caption"}) for key, data in second.items()])
    out = tmp_path / "m"
    with pytest.raises(error, match=message):
        build_sharded_memory(f"wds:{d}/*.tar", out, strict=True, progress=False)
    assert [s["name"] for s in load_manifest(out)["shards"]] == ["00000"]
    assert not pipeline_threads()


def test_closing_the_pipeline_early_ends_its_threads(tmp_path, wds_dir, ravis_cache):
    shards, _ = resolve_sources(f"wds:{wds_dir}/{{00000,00004}}.tar")
    (tmp_path / "shards").mkdir()
    results = build_shards(str(tmp_path), [(f"{i:05d}", s) for i, s in enumerate(shards)],
                           MemoryBuildConfig())
    assert next(results)["name"] == "00000"
    results.close()
    assert not pipeline_threads()


def test_reader_stays_a_bounded_number_of_batches_ahead(tmp_path):
    from shard_data import make_image

    from ravis.memory._shard_pipeline import Reader

    (tmp_path / "a.png").write_bytes(make_image(1, "PNG"))
    items = tuple((f"{i}", str(tmp_path / "a.png"), "text", -1) for i in range(40))
    jobs = [(f"{j:05d}", InputShard("files", f"x[{j}]", "c", items=items)) for j in range(5)]
    decoded = []

    class Counting:  # an image encoder's preprocess, counting the images it is given
        def preprocess(self, image):
            decoded.append(image.size)
            return np.zeros((2, 2, 3), np.uint8)

    settings = MemoryBuildConfig(batch_size=4, decode_workers=2, thumbnails=False)
    reader = Reader(jobs, Counting(), settings)
    try:
        time.sleep(1.0)  # nobody takes batches: the reader waits once its queue is full
        # queue: decode_workers + 2 items (headers or batches), one more batch waiting
        assert 0 < len(decoded) <= (settings.decode_workers + 3) * settings.batch_size
        got = []
        for name, shard, rows, skipped in reader.shards():
            assert len(rows) == 40 and all(r.image is None for r in rows) and not skipped
            for _ in range(10):
                batch = reader.next_batch()
                assert batch.ok == [0, 1, 2, 3] and batch.pixels.shape == (4, 2, 2, 3)
            got.append(name)
        assert got == [name for name, _ in jobs] and len(decoded) == 200
    finally:
        reader.close()
    assert not pipeline_threads()


# ---------------------------------------------------------------------------------------------
# Resume


KILLED_BUILD = """
import os, signal, sys
import ravis.memory.sharded as sharded
from ravis.memory.shard_build import build_sharded_memory

save_npy = sharded.save_npy

def dies_writing_shard_4_values(path, array):
    if path.name == "00004.values.npy":  # keys of shard 4 are in place, values half written
        (path.parent / ".00004.values.npy.killed.tmp").write_bytes(b"\\x93NUMPY half")
        os.kill(os.getpid(), signal.SIGKILL)
    save_npy(path, array)

sharded.save_npy = dies_writing_shard_4_values
build_sharded_memory(sys.argv[2:], sys.argv[1], progress=False)
"""


def test_resume_after_a_kill_gives_the_same_bytes(tmp_path, reference, wds_dir, parquet_dir,
                                                  ravis_cache):
    out = tmp_path / "mem"
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(out),
                           *sources(wds_dir, parquet_dir)], capture_output=True, text=True,
                          env={**os.environ, "RAVIS_CACHE": str(ravis_cache)}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / shard_file("00004", "keys")).exists()  # half a shard on disk...
    # ...not in it. Shards 0-2 were finished before the kill; on a loaded machine a slow
    # manifest save spaces the next ones out (ShardManifest.record), so fewer may be in.
    every = [f"{i:05d}" for i in range(7)]
    committed = ShardedMemory.open(out).shard_names
    assert 1 <= len(committed) <= 3 and committed == every[:len(committed)]

    built = []

    def counting(memdir, name, shard, settings):
        built.append(name)
        return build_shard(memdir, name, shard, settings)

    build_sharded_memory(sources(wds_dir, parquet_dir), out, progress=False,
                         shard_builder=counting)
    assert built == every[len(committed):]  # the failed one is retried
    assert all_bytes(out) == all_bytes(reference)  # no temporary file left either

    # A finished shard damaged on disk is rebuilt by the next run; intact ones are not.
    path = out / shard_file("00001", "values")
    path.write_bytes(path.read_bytes()[:-2] + b"\x00\x00")
    built.clear()
    build_sharded_memory(sources(wds_dir, parquet_dir), out, progress=False,
                         shard_builder=counting)
    assert built == ["00001", "00003"]
    assert all_bytes(out) == all_bytes(reference)


def test_build_refuses_another_memory_in_the_folder(reference, wds_dir, tmp_path):
    with pytest.raises(MemoryMismatchError, match="dtype"):
        build_sharded_memory(f"wds:{wds_dir}/00000.tar", reference, dtype="float32",
                             progress=False)
    with pytest.raises(MemoryMismatchError, match="memory add"):
        build_sharded_memory(f"wds:{wds_dir}/00004.tar", reference, progress=False)


# ---------------------------------------------------------------------------------------------
# Ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # The fault-injecting builder below lives in this test module, which Ray workers
    # cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def crash_once_builder(marker: str):
    """A shard builder whose worker dies in the middle of shard 00001, once."""
    def build(memdir, name, shard, settings):
        if name == "00001" and os.path.exists(marker):
            os.remove(marker)
            Path(memdir, shard_file(name, "keys")).write_bytes(b"half a shard")
            Path(memdir, "shards", f".{name}.values.npy.y.tmp").write_bytes(b"half")
            os._exit(1)  # the worker process dies; Ray retries the task
        return build_shard(memdir, name, shard, settings)
    return build


def test_ray_engine_writes_the_same_bytes(local_ray, tmp_path, reference, wds_dir,
                                          parquet_dir):
    marker = tmp_path / "crash-once"
    marker.write_text("")
    out = tmp_path / "mem"
    build_sharded_memory(sources(wds_dir, parquet_dir), out, engine="ray", progress=False,
                         shard_builder=crash_once_builder(str(marker)))
    assert not marker.exists()  # the crash did happen
    assert all_bytes(out) == all_bytes(reference)


# ---------------------------------------------------------------------------------------------
# Appending, folder sources, CLI


def test_add_appends_shards_and_updates_an_index(tmp_path, reference, wds_dir, parquet_dir,
                                                 monkeypatch):
    out = tmp_path / "mem"
    build_sharded_memory(f"wds:{wds_dir}/{{00000..00002}}.tar", out, progress=False)
    names = add_shards(out, [f"wds:{wds_dir}/00004.tar"], progress=False)
    assert names == ["00003"]
    (out / "index").mkdir()  # from now on the index hears of new shards
    calls = []
    fake = types.ModuleType("ravis.memory.indexing")
    fake.has_index = lambda memdir: True
    fake.indexed_rows = lambda memdir: 16  # the rows the index held before this add
    fake.add_shards_to_index = lambda memdir, new, progress: calls.append((Path(memdir), new))
    monkeypatch.setitem(sys.modules, "ravis.memory.indexing", fake)
    monkeypatch.setattr("ravis.memory.indexing", fake, raising=False)
    names = add_shards(out, [f"parquet:{parquet_dir}/*.parquet", f"wds:{wds_dir}/00004.tar"],
                       progress=False)
    assert names == ["00004", "00005", "00003"]  # the tar already added keeps its shard
    assert calls == [(out.resolve(), ["00004", "00005"])]  # only rows new to the index
    mem = ShardedMemory.open(out, verify=True)
    assert mem.shard_rows == [6, 4, 0, 6, 3, 4]
    ref = ShardedMemory.open(reference)
    for i in range(6):  # same rows as the one-go build, in shards named by arrival
        np.testing.assert_array_equal(mem.keys(i), ref.keys(i))
        np.testing.assert_array_equal(mem.values(i), ref.values(i))


def test_folder_source_labels(tmp_path, ravis_cache):
    from shard_data import make_image

    root = tmp_path / "folder"
    for cls, n in (("cat", 3), ("dog", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(make_image(10 * i + n, "PNG"))
    mem = build_sharded_memory(f"imagefolder:{root}", tmp_path / "m", dtype="float32",
                               thumbnails=False, rows_per_shard=2, progress=False)
    assert mem.shard_rows == [2, 2, 1] and mem.class_names == ["cat", "dog"]
    memory = ArrayMemory.from_memory(mem)
    assert memory.labels.tolist() == [0, 0, 0, 1, 1] and memory.texts[3] == "a photo of a dog"
    assert mem.meta(0).column("thumbnail").null_count == 2 and mem.dtype == np.float32


def test_the_same_image_through_two_sources_is_stored_once(tmp_path, ravis_cache):
    """Exact copies (same bytes) across sources, within one source and in a later add are
    found by content hash: the first copy in shard order is kept, the others counted."""
    from shard_data import make_image

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, files in ((a, {"cat/1.png": 1, "cat/2.png": 2, "dog/3.png": 3}),
                        (b, {"cat/copy-of-1.png": 1, "cat/4.png": 4, "cat/again-4.png": 4}),
                        (c, {"dog/copy-of-3.png": 3, "dog/5.png": 5})):
        for rel, seed in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(make_image(seed, "PNG"))
    out = tmp_path / "m"
    mem = build_sharded_memory([f"imagefolder:{a}", f"imagefolder:{b}"], out, dtype="float32",
                               thumbnails=False, rows_per_shard=2, progress=False)
    ids = mem.meta_at(np.arange(mem.count), ["id"])["id"]
    assert mem.count == 4 and mem.manifest["skipped"] == {"duplicate_image": 2}
    assert not any("copy-of" in i or "again" in i for i in ids)
    first = {s["name"]: s["files"] for s in mem.manifest["shards"]}
    ShardedMemory.open(out, verify=True)  # rewritten shards carry their new checksums

    add_shards(out, f"imagefolder:{c}", rows_per_shard=2, progress=False)
    mem = ShardedMemory.open(out, verify=True)
    assert mem.count == 5 and mem.manifest["skipped"] == {"duplicate_image": 3}
    assert {s["name"]: s["files"] for s in mem.manifest["shards"][:len(first)]} == first  # old shards untouched
    built_again = build_sharded_memory([f"imagefolder:{a}", f"imagefolder:{b}"], tmp_path / "m2",
                                       dtype="float32", thumbnails=False, rows_per_shard=2,
                                       progress=False)
    np.testing.assert_array_equal(built_again.keys_at(np.arange(4)), mem.keys_at(np.arange(4)))
    before = all_bytes(tmp_path / "m2")
    build_sharded_memory([f"imagefolder:{a}", f"imagefolder:{b}"], tmp_path / "m2", dtype="float32",
                         thumbnails=False, rows_per_shard=2, progress=False)  # a rerun: all done
    assert all_bytes(tmp_path / "m2") == before


def test_cli_build_verify_add(tmp_path, wds_dir, parquet_dir, ravis_cache, capsys):
    out = tmp_path / "mem"
    assert main(["memory", "build", "--source", f"wds:{wds_dir}/{{00000..00003}}.tar",
                 "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "10 rows in 3 shards" in text and "failed shard" in text and "00003.tar" in text
    assert main(["memory", "add", str(out), "--source", str(parquet_dir / "paths.parquet"),
                 "--quiet"]) == 0
    assert "added shards 00004" in capsys.readouterr().out
    assert main(["memory", "verify", str(out)]) == 0
    assert "OK, 14 rows in 4 shards" in capsys.readouterr().out
    path = out / shard_file("00004", "keys")
    data = bytearray(path.read_bytes())
    data[200] ^= 1
    path.write_bytes(bytes(data))
    assert main(["memory", "verify", str(out)]) == 2
    assert "00004.keys.npy: checksum mismatch" in capsys.readouterr().err


def test_ray_strict_error_is_the_task_error(local_ray, tmp_path, wds_dir):
    with pytest.raises(SourceError, match=r"^\S*00001\.tar: sample '10002': missing caption$"):
        build_sharded_memory(f"wds:{wds_dir}/{{00000,00001}}.tar", tmp_path / "m",
                             engine="ray", strict=True, progress=False)


def test_second_writer_is_refused(tmp_path, wds_dir):
    import fcntl

    from ravis.memory.shard_build import MemoryBusyError

    out = tmp_path / "m"
    out.mkdir()
    with open(out / ".lock", "w") as f:  # a build in progress holds the lock
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(MemoryBusyError, match="another"):
            build_sharded_memory(f"wds:{wds_dir}/00000.tar", out, progress=False)


def test_rows_an_index_refers_to_never_move(tmp_path, wds_dir):
    d = tmp_path / "tars"
    d.mkdir()
    for name in ("00000", "00003", "00004"):
        (d / f"{name}.tar").write_bytes((wds_dir / f"{name}.tar").read_bytes())
    out, spec = tmp_path / "m", f"wds:{d}/*.tar"
    build_sharded_memory(spec, out, progress=False)
    assert ShardedMemory.open(out).shard_names == ["00000", "00002"]  # 00003.tar failed
    (out / "index").mkdir()
    # Redoing a damaged shard from its own input keeps every row id: done.
    path = out / shard_file("00000", "keys")
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    (d / "00003.tar").write_bytes((wds_dir / "00000.tar").read_bytes())  # readable now
    build_sharded_memory(spec, out, progress=False)
    mem = ShardedMemory.open(out, verify=True)
    # ...but the failed shard, readable now, would slide the rows of 00002: held back.
    assert mem.shard_names == ["00000", "00002"] and len(mem.manifest["failed_shards"]) == 1
    (d / "00001.tar").write_bytes((wds_dir / "00000.tar").read_bytes())  # the glob grows
    with pytest.raises(MemoryMismatchError, match=r"\['00002'\] now come from other"):
        build_sharded_memory(spec, out, progress=False)
    (d / "00001.tar").unlink()
    (out / "index").rmdir()  # without an index, the failed shard is retried
    assert build_sharded_memory(spec, out, progress=False).shard_names == [
        "00000", "00001", "00002"]


def test_a_latin1_file_name_is_built_and_shown_escaped(tmp_path, ravis_cache):
    """`ravis memory build` used to abort on such a name with a UnicodeEncodeError naming no file."""
    from shard_data import make_image

    root = tmp_path / "folder"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "1.png").write_bytes(make_image(1, "PNG"))
    with open(os.path.join(os.fsencode(root / "cat"), b"caf\xe9.png"), "wb") as f:
        f.write(make_image(2, "PNG"))
    mem = build_sharded_memory(f"imagefolder:{root}", tmp_path / "m", dtype="float32",
                               thumbnails=False, progress=False)
    assert mem.count == 2
    assert any(i.endswith("cat/caf\\xe9.png") for i in mem.meta_at([0, 1], ["id"])["id"])
