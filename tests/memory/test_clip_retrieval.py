"""Importing and exporting the clip-retrieval / LAION embedding layout: each variant of the
source folder, every kind of broken file named with its row, verify after a source file
changed, killed-and-resumed and disk-full imports against uninterrupted ones byte for byte,
and export -> import giving the same memory (bytes, ids, texts, exact neighbours).

The folders hold the default encoders' dims (1280-d keys, 384-d values): the import reads
the encoders' real fingerprints and dims, so nothing is bypassed."""

import errno
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ravis.cli import main
from ravis.index.multi import exact_search
from ravis.memory import MemoryMismatchError
from ravis.memory import clip_retrieval as cr
from ravis.memory.clip_retrieval import (ClipRetrievalError, DiskFullError,
                                         export_clip_retrieval, import_clip_retrieval)
from ravis.memory.sharded import FORMAT, ShardedMemory, meta_table, save_manifest, write_shard

pytestmark = pytest.mark.usefixtures("ravis_cache")

DIM, VALUE_DIM = 1280, 384  # efficientnet_lite0, minilm
ENCODERS = ("efficientnet_lite0", "minilm")
SIZES = {0: 30, 1: 20, 2: 45}


def unit_rows(rng, n: int, d: int, dtype: str) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def make_source(root: Path, sizes=SIZES, dtype="float16", path_col="url", id_col=None) -> Path:
    """A clip-retrieval folder: file triple i with sizes[i] rows."""
    rng = np.random.default_rng(7)
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    for i, n in sizes.items():
        np.save(root / "img_emb" / f"img_emb_{i}.npy", unit_rows(rng, n, DIM, dtype))
        np.save(root / "text_emb" / f"text_emb_{i}.npy", unit_rows(rng, n, VALUE_DIM, dtype))
        meta = {"caption": [f"picture {i}-{r}" for r in range(n)],
                path_col: [f"http://x/{i}/{r}.jpg" if path_col == "url" else f"img/{i}_{r}.jpg"
                           for r in range(n)],
                "similarity": [0.25 + r / 1000 for r in range(n)],
                "NSFW": ["UNLIKELY"] * (n - 1) + [None]}
        if id_col:
            meta[id_col] = [f"{i:04d}{r:05d}" for r in range(n)]
        pq.write_table(pa.table(meta), root / "metadata" / f"metadata_{i}.parquet")
    return root


def run_import(src, out, **kw) -> ShardedMemory:
    return import_clip_retrieval(src, out, *ENCODERS, progress=False, **kw)


def memory_bytes(memdir: Path) -> dict[str, bytes]:
    """The manifest and every file under shards/ (temporaries would show up too)."""
    files = [memdir / "manifest.json", *sorted((memdir / "shards").rglob("*"))]
    return {p.relative_to(memdir).as_posix(): p.read_bytes() for p in files if p.is_file()}


def metas(mem: ShardedMemory) -> dict[str, list]:
    tables = [mem.meta(i).to_pydict() for i in range(len(mem.shard_names))]
    return {c: [v for t in tables for v in t[c]] for c in ("id", "text", "source", "label", "json")}


# ---------------------------------------------------------------------------------------------
# Import


@pytest.mark.parametrize("copy", [False, True], ids=["in-place", "copy"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("path_col", ["url", "image_path"])
def test_import_variants(tmp_path, path_col, dtype, copy):
    src = make_source(tmp_path / "laion", dtype=dtype, path_col=path_col)
    mem = ShardedMemory.open(run_import(src, tmp_path / "mem", copy=copy).memdir, verify=True)
    from ravis.encoders import create_image_encoder, create_text_encoder

    m = mem.manifest
    assert m["format"] == FORMAT and mem.shard_names == ["00000", "00001", "00002"]
    assert (mem.count, mem.dim, mem.value_dim, mem.dtype) == (95, DIM, VALUE_DIM, np.dtype(dtype))
    assert m["key_encoder"] == create_image_encoder("efficientnet_lite0").fingerprint()
    assert m["value_encoder"] == create_text_encoder("minilm").fingerprint()
    assert m["class_names"] == [] and m["failed_shards"] == [] and m["skipped"] == {}
    for i, name in enumerate(mem.shard_names):
        keys = np.load(src / "img_emb" / f"img_emb_{i}.npy")
        assert mem.keys(i).dtype == keys.dtype and np.array_equal(mem.keys(i), keys)
        assert np.array_equal(mem.values(i), np.load(src / "text_emb" / f"text_emb_{i}.npy"))
        path = m["shards"][i]["files"]["keys"]["path"]
        in_place = str(src / "img_emb" / f"img_emb_{i}.npy")
        assert path == (f"shards/{name}.keys.npy" if copy else in_place)
    copied = sorted(p.name for p in (tmp_path / "mem" / "shards").glob("*.npy"))
    assert len(copied) == (6 if copy else 0)  # in place: the arrays stay where they are
    meta = metas(mem)
    assert meta["id"][30] == "00001/0" and meta["text"][30] == "picture 1-0"
    assert set(meta["source"]) == {"laion"} and set(meta["label"]) == {-1}
    row = json.loads(meta["json"][31])
    assert row == {path_col: row[path_col], "similarity": 0.251, "NSFW": "UNLIKELY"}
    assert "NSFW" not in json.loads(meta["json"][29])  # a null value is left out
    assert mem.meta(0).column("thumbnail")[0].as_py() == b""


def test_import_ids_source_name_and_numeric_order(tmp_path):
    src = make_source(tmp_path / "laion", sizes={2: 5, 10: 6, 9: 7}, id_col="key")
    mem = run_import(src, tmp_path / "mem", source_name="laion400m")
    assert mem.shard_names == ["00002", "00009", "00010"] and mem.shard_rows == [5, 7, 6]
    assert np.array_equal(mem.keys(2), np.load(src / "img_emb" / "img_emb_10.npy"))
    meta = metas(mem)
    assert meta["id"][:2] == ["000200000", "000200001"] and set(meta["source"]) == {"laion400m"}
    assert "key" not in json.loads(meta["json"][0])


def _set_row(src: Path, rel: str, row: int, value) -> None:
    x = np.load(src / rel)
    x[row] = value
    np.save(src / rel, x)


def _resave(src: Path, rel: str, fn) -> None:
    np.save(src / rel, fn(np.load(src / rel)), allow_pickle=True)


def _rewrite_meta(src: Path, rel: str, fn) -> None:
    pq.write_table(fn(pq.read_table(src / rel)), src / rel)


def _truncate(src: Path, rel: str) -> None:
    (src / rel).write_bytes((src / rel).read_bytes()[:-100])


K0, K1, K2 = (f"img_emb/img_emb_{i}.npy" for i in range(3))
V0, V1, V2 = (f"text_emb/text_emb_{i}.npy" for i in range(3))
M0, M1, M2 = (f"metadata/metadata_{i}.parquet" for i in range(3))
BROKEN = {  # name: (damage done to a good folder, the error it must give)
    "rows disagree": (lambda s: _resave(s, V1, lambda x: x[:-1]),
                      r"img_emb_1\.npy: 20 rows, but .*text_emb_1\.npy has 19 and "
                      r".*metadata_1\.parquet 20"),
    "metadata rows": (lambda s: _rewrite_meta(s, M2, lambda t: t.slice(1)),
                      r"img_emb_2\.npy: 45 rows, but .*text_emb_2\.npy has 45 and "
                      r".*metadata_2\.parquet 44"),
    "missing text_emb": (lambda s: (s / V2).unlink(),
                         r"text_emb/text_emb_2\.npy: missing \(the counterpart of .*img_emb_2"),
    "missing metadata": (lambda s: (s / M0).unlink(), r"metadata/metadata_0\.parquet: missing"),
    "wrong key dim": (lambda s: _resave(s, K1, lambda x: x[:, :512]),
                      r"img_emb_1\.npy: 512-d embeddings, but the key encoder makes 1280-d"),
    "wrong value dim": (lambda s: _resave(s, V0, lambda x: x[:, :100]),
                        r"text_emb_0\.npy: 100-d embeddings, but the value encoder makes 384-d"),
    "1-d array": (lambda s: _resave(s, K0, lambda x: x.reshape(-1)),
                  r"img_emb_0\.npy: shape \(38400,\), expected \(rows, dim\)"),
    "float64": (lambda s: _resave(s, V1, lambda x: x.astype(np.float64)),
                r"text_emb_1\.npy: dtype float64, expected float16 or float32"),
    "object array": (lambda s: _resave(s, K2, lambda x: x.astype(object)),
                     r"img_emb_2\.npy: dtype object, expected float16 or float32"),
    "not npy": (lambda s: (s / K1).write_bytes(b"not an array"),
                r"img_emb_1\.npy: not a readable \.npy file"),
    "truncated npy": (lambda s: _truncate(s, V2), r"text_emb_2\.npy: not a readable \.npy array"),
    "mixed within shard": (lambda s: _resave(s, V1, lambda x: x.astype(np.float32)),
                           r"img_emb_1\.npy is float16 but .*text_emb_1\.npy is float32"),
    "mixed across shards": (lambda s: [_resave(s, f, lambda x: x.astype(np.float32))
                                       for f in (K2, V2)],
                            r"img_emb_2\.npy is float32 but .*img_emb_0\.npy is float16"),
    "NaN key row": (lambda s: _set_row(s, K1, 17, np.nan),
                    r"img_emb_1\.npy: row 17: NaN or infinite values"),
    "inf value row": (lambda s: _set_row(s, V2, 41, np.inf),
                      r"text_emb_2\.npy: row 41: NaN or infinite values"),
    "zero key row": (lambda s: _set_row(s, K0, 9, 0), r"img_emb_0\.npy: row 9: all zeros"),
    "zero value row": (lambda s: _set_row(s, V1, 12, 0), r"text_emb_1\.npy: row 12: all zeros"),
    "key not unit": (lambda s: _resave(s, K2, lambda x: np.concatenate([x[:33], 2 * x[33:]])),
                     r"img_emb_2\.npy: row 33: norm 2\.0000; keys must be unit vectors"),
    "no caption": (lambda s: _rewrite_meta(s, M1, lambda t: t.drop(["caption"])),
                   r"metadata_1\.parquet: no caption column"),
    "binary caption": (lambda s: _rewrite_meta(s, M1, lambda t: t.set_column(
        0, "caption", t.column("caption").cast(pa.binary()))),
                       r"metadata_1\.parquet: the caption column holds binary, not text"),
    "caption not UTF-8": (lambda s: _rewrite_meta(s, M2, lambda t: t.set_column(
        0, "caption", _not_utf8(t.column("caption").combine_chunks(), 19))),
                          r"metadata_2\.parquet: rows 16 to 23 hold text that is not UTF-8"),
}


def _not_utf8(captions: pa.Array, row: int) -> pa.Array:
    """captions with row's first byte made 0xff: parquet stores such a string unchecked."""
    validity, offsets, data = captions.buffers()
    raw = bytearray(data.to_pybytes())
    raw[int(np.frombuffer(offsets, np.int32)[captions.offset + row])] = 0xFF
    return pa.Array.from_buffers(pa.string(), len(captions), [validity, offsets, pa.py_buffer(bytes(raw))],
                                 offset=captions.offset)


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_folder_names_file_and_row(tmp_path, monkeypatch, case):
    """Rows are checked in blocks of 8 here, so a bad row in a later block must still be
    reported with its row number in the file."""
    monkeypatch.setattr(cr, "BLOCK_ROWS", 8)
    src = make_source(tmp_path / "laion")
    damage, message = BROKEN[case]
    damage(src)
    with pytest.raises(ClipRetrievalError, match=message):
        run_import(src, tmp_path / "mem")


def test_empty_folder(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ClipRetrievalError, match="no img_emb/img_emb_"):
        run_import(tmp_path / "nothing", tmp_path / "mem")


def test_verify_catches_a_changed_source_file(tmp_path, capsys):
    src = make_source(tmp_path / "laion")
    run_import(src, tmp_path / "mem")
    copied = run_import(src, tmp_path / "copied", copy=True)
    path = src / "img_emb" / "img_emb_1.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last key row: same size, other content
    path.write_bytes(bytes(data))
    with pytest.raises(MemoryMismatchError, match=r"img_emb_1\.npy: checksum mismatch"):
        ShardedMemory.open(tmp_path / "mem").verify()
    assert main(["memory", "verify", str(tmp_path / "mem")]) == 2
    assert "img_emb_1.npy: checksum mismatch" in capsys.readouterr().err
    copied.verify()  # a copy does not depend on the source any more


def test_rerun_redoes_only_a_changed_shard(tmp_path, monkeypatch):
    src = make_source(tmp_path / "laion")
    run_import(src, tmp_path / "mem")
    _resave(src, K1, lambda x: x[::-1])
    calls = _count_calls(monkeypatch)
    mem = run_import(src, tmp_path / "mem")
    assert calls == ["00001"]
    mem.verify()


def test_other_settings_are_refused(tmp_path):
    src = make_source(tmp_path / "laion")
    run_import(src, tmp_path / "mem")
    with pytest.raises(MemoryMismatchError, match="the memory has import .*use another folder"):
        run_import(src, tmp_path / "mem", copy=True)


def test_a_second_writer_is_refused(tmp_path):
    from ravis.memory.shard_build import MemoryBusyError, _exclusive

    src = make_source(tmp_path / "laion")
    with _exclusive(tmp_path / "mem"), pytest.raises(MemoryBusyError, match="another"):
        run_import(src, tmp_path / "mem")


# ---------------------------------------------------------------------------------------------
# Kill-safety


def _count_calls(monkeypatch, fail_at: str | None = None, exc: BaseException | None = None):
    """Wraps import_shard: records shard names; at ``fail_at`` leaves a half-written
    temporary file (what a kill leaves) and raises ``exc``."""
    calls, real = [], cr.import_shard

    def wrapped(memdir, name, *args):
        calls.append(name)
        if name == fail_at:
            (memdir / "shards" / f".{name}.keys.npy.abc123.tmp").write_bytes(b"\x93NUMPY half")
            raise exc
        return real(memdir, name, *args)

    monkeypatch.setattr(cr, "import_shard", wrapped)
    return calls


@pytest.mark.parametrize("copy", [False, True], ids=["in-place", "copy"])
def test_killed_import_resumes_to_the_same_bytes(tmp_path, monkeypatch, copy):
    src = make_source(tmp_path / "laion")
    reference = run_import(src, tmp_path / "ref", copy=copy).memdir
    with monkeypatch.context() as m:
        _count_calls(m, fail_at="00002", exc=KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            run_import(src, tmp_path / "mem", copy=copy)
    manifest = json.loads((tmp_path / "mem" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["00000", "00001"]
    ShardedMemory.open(tmp_path / "mem").verify()  # what is recorded is whole
    calls = _count_calls(monkeypatch)
    run_import(src, tmp_path / "mem", copy=copy)
    assert calls == ["00002"]
    assert memory_bytes(tmp_path / "mem") == memory_bytes(reference)


class _FullDisk(io.FileIO):
    """A file on a disk that fills after 100 bytes."""

    def write(self, data):
        if self.tell() + len(data) > 100:
            super().write(bytes(data)[:max(0, 100 - self.tell())])
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


@pytest.mark.parametrize("copy", [False, True], ids=["in-place", "copy"])
def test_disk_full_keeps_what_was_written_and_resumes(tmp_path, monkeypatch, copy, capsys):
    """Every write of shard 00001 (its metadata, and its arrays when copied) hits a full disk."""
    src = make_source(tmp_path / "laion")
    reference = run_import(src, tmp_path / "ref", copy=copy).memdir
    real_open = open

    def full_open(path, mode="r", *args, **kw):
        if "w" in mode and ".00001." in Path(path).name:
            return _FullDisk(path, "w")
        return real_open(path, mode, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(cr, "open", full_open, raising=False)
        with pytest.raises(DiskFullError, match=r"disk full .*1 of 3 shards done .*rerun"):
            run_import(src, tmp_path / "mem", copy=copy)
        assert main(["memory", "import", str(src), "--out", str(tmp_path / "mem"),
                     "--key-encoder", ENCODERS[0], "--value-encoder", ENCODERS[1], "--quiet"]
                    + ["--copy"] * copy) == 2
    assert "disk full" in capsys.readouterr().err
    mem = ShardedMemory.open(tmp_path / "mem")
    assert mem.shard_names == ["00000"]
    mem.verify()
    assert not [p for p in (tmp_path / "mem" / "shards").iterdir() if p.name.endswith(".tmp")]
    run_import(src, tmp_path / "mem", copy=copy)
    assert memory_bytes(tmp_path / "mem") == memory_bytes(reference)


def test_disk_full_while_saving_the_manifest(tmp_path, monkeypatch):
    src = make_source(tmp_path / "laion")
    reference = run_import(src, tmp_path / "ref").memdir
    saves, real = [], cr.save_manifest

    def full(memdir, manifest):
        saves.append(1)
        if len(saves) == 3:  # the save after shard 00001 (1: start, 2: after 00000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(memdir, manifest)

    with monkeypatch.context() as m:
        m.setattr(cr, "save_manifest", full)
        with pytest.raises(DiskFullError):
            run_import(src, tmp_path / "mem")
    assert ShardedMemory.open(tmp_path / "mem").shard_names == ["00000"]
    run_import(src, tmp_path / "mem")
    assert memory_bytes(tmp_path / "mem") == memory_bytes(reference)


# ---------------------------------------------------------------------------------------------
# Export and the round trip


def builder_like_memory(memdir: Path) -> ShardedMemory:
    """A memory as `ravis memory build` writes one (labels, thumbnails, img2dataset json,
    an empty shard), made with write_shard from random unit rows."""
    from ravis.encoders import create_image_encoder, create_text_encoder

    rng = np.random.default_rng(3)
    shards = []
    for s, n in enumerate((25, 0, 40)):
        name = f"{s:05d}"
        jsons = [None if r % 4 == 0 else json.dumps({"key": f"k{r}", "url": f"http://x/{r}",
                                                      "width": 96 + r}) for r in range(n)]
        meta = meta_table([f"{name}/k{r}" for r in range(n)],
                          [f"caption {s} {r}" for r in range(n)], ["tuxpaint"] * n,
                          [r % 3 for r in range(n)], [b"\xff\xd8jpeg"] * n, jsons)
        files = write_shard(memdir, name, unit_rows(rng, n, DIM, "float16"),
                            unit_rows(rng, n, VALUE_DIM, "float16"), meta)
        shards.append({"name": name, "input": f"in{s}", "rows": n, "skipped": {}, "files": files})
    save_manifest(memdir, {
        "format": FORMAT, "key_encoder": create_image_encoder(ENCODERS[0]).fingerprint(),
        "value_encoder": create_text_encoder(ENCODERS[1]).fingerprint(), "dim": DIM,
        "value_dim": VALUE_DIM, "dtype": "float16", "count": 0, "class_names": ["a", "b", "c"],
        "skipped": {}, "sources": [], "shards": shards, "failed_shards": []})
    return ShardedMemory.open(memdir)


def assert_same_memory(a: ShardedMemory, b: ShardedMemory) -> None:
    assert b.shard_rows == a.shard_rows and b.dtype == a.dtype
    for i in range(len(a.shard_rows)):
        assert a.keys(i).tobytes() == b.keys(i).tobytes()
        assert a.values(i).tobytes() == b.values(i).tobytes()
        assert [a.manifest["shards"][i]["files"][k]["sha256"] for k in ("keys", "values")] == \
               [b.manifest["shards"][i]["files"][k]["sha256"] for k in ("keys", "values")]
    ma, mb = metas(a), metas(b)
    for column in ("id", "text", "source", "label"):
        assert ma[column] == mb[column], column
    xq = np.asarray(a.keys(0)[:10], np.float32)
    Da, Ia = exact_search([a.keys(i) for i in range(len(a.shard_rows))], xq, 15)
    Db, Ib = exact_search([b.keys(i) for i in range(len(b.shard_rows))], xq, 15)
    assert np.array_equal(Ia, Ib) and np.array_equal(Da, Db)


@pytest.mark.parametrize("copy", [False, True], ids=["in-place", "copy"])
def test_export_then_import_gives_the_same_memory(tmp_path, copy):
    original = builder_like_memory(tmp_path / "mem")
    assert export_clip_retrieval(original.memdir, tmp_path / "export", progress=False) == 3
    back = run_import(tmp_path / "export", tmp_path / "back", copy=copy)
    back.verify()
    assert_same_memory(original, back)
    jsons = metas(back)["json"]
    assert json.loads(jsons[1]) == {"json_key": "k1", "url": "http://x/1", "width": 97}
    assert jsons[0] is None  # a row without json stays without


def test_exported_files_are_what_clip_retrieval_reads(tmp_path):
    original = builder_like_memory(tmp_path / "mem")
    export_clip_retrieval(original.memdir, tmp_path / "export", progress=False)
    img = np.load(tmp_path / "export" / "img_emb" / "img_emb_2.npy", allow_pickle=False)
    assert img.shape == (40, DIM) and img.dtype == np.float16
    assert np.load(tmp_path / "export" / "text_emb" / "text_emb_1.npy").shape == (0, VALUE_DIM)
    table = pq.read_table(tmp_path / "export" / "metadata" / "metadata_0.parquet")
    assert table.column_names == ["caption", "key", "source", "label", "json_key", "url", "width"]
    assert table.slice(1, 1).to_pylist() == [{"caption": "caption 0 1", "key": "00000/k1",
                                              "source": "tuxpaint", "label": "b", "json_key": "k1",
                                              "url": "http://x/1", "width": 97}]


def test_import_export_import_keeps_the_metadata(tmp_path):
    src = make_source(tmp_path / "laion", id_col="id")
    first = run_import(src, tmp_path / "first")
    export_clip_retrieval(first.memdir, tmp_path / "export", progress=False)
    second = run_import(tmp_path / "export", tmp_path / "second")
    assert_same_memory(first, second)
    assert metas(first)["json"] == metas(second)["json"]


def test_export_refuses_leftovers_of_a_bigger_export(tmp_path):
    src = make_source(tmp_path / "laion", sizes={0: 5, 1: 5, 2: 5, 3: 5})
    export_clip_retrieval(run_import(src, tmp_path / "big").memdir, tmp_path / "export",
                          progress=False)
    small = builder_like_memory(tmp_path / "small")
    with pytest.raises(ClipRetrievalError, match=r"img_emb_3\.npy: left from another export"):
        export_clip_retrieval(small.memdir, tmp_path / "export", progress=False)


def test_export_refuses_a_damaged_shard(tmp_path):
    mem = builder_like_memory(tmp_path / "mem")
    path = mem.memdir / mem.manifest["shards"][2]["files"]["values"]["path"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(MemoryMismatchError, match=r"00002\.values\.npy: checksum mismatch"):
        export_clip_retrieval(mem.memdir, tmp_path / "export", progress=False)
    assert not (tmp_path / "export" / "text_emb" / "text_emb_2.npy").exists()


# ---------------------------------------------------------------------------------------------
# The CLI


def test_cli_import_and_export(tmp_path, capsys):
    src = make_source(tmp_path / "laion", path_col="image_path")
    mem, out = tmp_path / "mem", tmp_path / "export"
    encoders = ["--key-encoder", ENCODERS[0], "--value-encoder", ENCODERS[1]]
    assert main(["memory", "import", str(src), "--out", str(mem), *encoders, "--copy",
                 "--source-name", "laion-mini", "--quiet"]) == 0
    assert "95 rows in 3 shards (1280-d keys, 384-d values, float16)" in capsys.readouterr().out
    assert main(["memory", "verify", str(mem)]) == 0
    assert main(["memory", "export", str(mem), "--format", "clip-retrieval", "--out", str(out),
                 "--quiet"]) == 0
    assert "3 file triples" in capsys.readouterr().out
    assert main(["memory", "import", str(out), "--out", str(tmp_path / "back"), *encoders,
                 "--quiet"]) == 0
    assert_same_memory(ShardedMemory.open(mem), ShardedMemory.open(tmp_path / "back"))
    assert set(metas(ShardedMemory.open(tmp_path / "back"))["source"]) == {"laion-mini"}


def test_cli_errors_name_the_file(tmp_path, capsys):
    src = make_source(tmp_path / "laion")
    (src / "metadata" / "metadata_1.parquet").unlink()
    assert main(["memory", "import", str(src), "--out", str(tmp_path / "mem"), "--key-encoder",
                 ENCODERS[0], "--value-encoder", ENCODERS[1], "--quiet"]) == 2
    assert "metadata_1.parquet: missing" in capsys.readouterr().err
