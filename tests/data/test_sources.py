"""Input shard readers: webdataset tars, parquet tables, folders; every fault counted or named."""

import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_data import good_sample, make_image, write_tar

from ravis.data import BadImageError
from ravis.data.images import open_image
from ravis.data.sources import (InputShard, ShardReadError, SourceError,
                                  read_rows, resolve_sources)


def tar_shard(path) -> InputShard:
    return InputShard("wds", str(path), "c", path=str(path))


def test_brace_pattern_gives_sorted_shards(wds_dir):
    shards, class_names = resolve_sources(f"wds:{wds_dir}/{{00004,00002,00000,00001}}.tar")
    assert [s.input for s in shards] == [str(wds_dir / f"0000{i}.tar") for i in (0, 1, 2, 4)]
    assert class_names == [] and shards[0].collection == wds_dir.name
    bare, _ = resolve_sources(str(wds_dir / "00000.tar"))  # a .tar path needs no "wds:"
    assert bare[0].kind == "wds"


def test_good_tar_rows_in_order_with_metadata(wds_dir):
    out = read_rows(tar_shard(wds_dir / "00000.tar"))
    assert [r.key for r in out.rows] == [f"0000{i}" for i in range(6)]
    assert out.rows[2].text == "a picture number 2" and '"url"' in out.rows[2].json
    assert not out.skipped
    assert [open_image(r.image, where=r.key).size for r in out.rows] == [(96, 72)] * 6  # jpg png webp


def test_faulty_tar_counts_each_reason(wds_dir):
    out = read_rows(tar_shard(wds_dir / "00001.tar"))
    assert dict(out.skipped) == {"missing_caption": 1, "duplicate_key": 1}
    keys = [r.key for r in out.rows]
    assert keys == ["10000", "10001", "10003", "10004", "10005", "10006"]
    assert out.rows[0].text == "a picture number 10"  # the first of a duplicate key wins
    # The truncated and the undecodable image are read as bytes and refused at decoding.
    for row in out.rows[2:4]:
        with pytest.raises(BadImageError, match=f"where/{row.key}"):
            open_image(row.image, where=f"where/{row.key}")


def test_strict_names_the_shard_and_key(wds_dir):
    with pytest.raises(SourceError, match=r"00001\.tar: sample '10002': missing caption"):
        read_rows(tar_shard(wds_dir / "00001.tar"), strict=True)
    with pytest.raises(SourceError, match=r"00002\.tar: empty shard"):
        read_rows(tar_shard(wds_dir / "00002.tar"), strict=True)


def test_empty_tar_has_no_rows(wds_dir):
    out = read_rows(tar_shard(wds_dir / "00002.tar"))
    assert out.rows == [] and not out.skipped


def test_unreadable_and_truncated_tars_fail_by_name(wds_dir, tmp_path):
    with pytest.raises(ShardReadError, match=r"00003\.tar: cannot read tar shard"):
        read_rows(tar_shard(wds_dir / "00003.tar"))
    data = (wds_dir / "00000.tar").read_bytes()
    with tarfile.open(wds_dir / "00000.tar") as tar:
        last = tar.getmembers()[-1]
    # inside a member, at a header, inside a header
    for cut in (last.offset_data + 10, last.offset, last.offset + 100):
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        with pytest.raises(ShardReadError, match=r"cut\.tar: cannot read tar shard"):
            read_rows(tar_shard(tmp_path / "cut.tar"))
    with pytest.raises(ShardReadError, match="gone.tar.*not found"):
        read_rows(tar_shard(tmp_path / "gone.tar"))


def test_repeated_member_is_a_duplicate_sample(tmp_path):
    key, files = good_sample("a", 1)
    write_tar(tmp_path / "t.tar", [(key, files), (key, files), good_sample("b", 2)])
    out = read_rows(tar_shard(tmp_path / "t.tar"))
    assert [r.key for r in out.rows] == ["a", "b"] and out.skipped == {"duplicate_key": 1}


def test_nested_keys_and_missing_image(tmp_path):
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        from shard_data import add_member
        add_member(tar, "dir/x.jpg", make_image(1))
        add_member(tar, "dir/x.txt", b"nested")
        add_member(tar, "y.json", b"{}")
        add_member(tar, "y.txt", b"caption without an image")
    out = read_rows(tar_shard(tmp_path / "t.tar"))
    assert [r.key for r in out.rows] == ["dir/x"] and out.skipped == {"missing_image": 1}


def test_pattern_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="no file matches"):
        resolve_sources(f"wds:{tmp_path}/{{0..3}}.tar")
    with pytest.raises(SourceError, match="unknown source spec"):
        resolve_sources("s3://bucket/x")


def test_parquet_bytes_and_paths(parquet_dir):
    shards, _ = resolve_sources(f"parquet:{parquet_dir}/*.parquet")
    assert [s.input for s in shards] == [str(parquet_dir / n) for n in ("bytes.parquet",
                                                                        "paths.parquet")]
    by_bytes, by_path = (read_rows(s) for s in shards)
    assert [r.key for r in by_bytes.rows] == ["b0", "b1", "b2"]
    assert by_bytes.skipped == {"missing_caption": 1}
    assert by_path.rows[1].image == str(parquet_dir / "img" / "p1.png")
    assert [r.key for r in by_path.rows] == ["000000000", "000000001", "000000002", "000000003"]
    for r in by_bytes.rows + by_path.rows:
        assert open_image(r.image, where=r.key).size == (96, 72)


def test_parquet_column_names(parquet_dir, tmp_path):
    shards, _ = resolve_sources(f"parquet:{parquet_dir}/paths.parquet:image_path:text")
    assert len(read_rows(shards[0]).rows) == 4
    shards, _ = resolve_sources(f"parquet:{parquet_dir}/paths.parquet:pixels")
    with pytest.raises(SourceError, match="no image column 'pixels'"):
        read_rows(shards[0])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    shards, _ = resolve_sources(str(tmp_path / "bad.parquet"))
    with pytest.raises(ShardReadError, match=r"bad\.parquet"):
        read_rows(shards[0])
    pq.write_table(pa.table({"image": [{"bytes": make_image(3), "path": None}],
                             "caption": ["hf struct"]}), tmp_path / "hf.parquet")
    shards, _ = resolve_sources(str(tmp_path / "hf.parquet"))
    assert open_image(read_rows(shards[0]).rows[0].image, where="x").size == (96, 72)


def test_imagefolder_shards_labels_and_prompt_fallback(tmp_path):
    for cls, n in (("cat", 3), ("dog", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{i}.png").write_bytes(make_image(i, "PNG"))
    (tmp_path / "cat" / "0.txt").write_text("a grey cat\n")
    shards, class_names = resolve_sources(f"imagefolder:{tmp_path}", rows_per_shard=2)
    assert class_names == ["cat", "dog"]
    assert [len(s.items) for s in shards] == [2, 2, 1]
    assert shards[0].input == f"imagefolder:{tmp_path}[0:2]"
    rows = [r for s in shards for r in read_rows(s).rows]
    assert [(r.key, r.label) for r in rows] == [("cat/0.png", 0), ("cat/1.png", 0),
                                               ("cat/2.png", 0), ("dog/0.png", 1),
                                               ("dog/1.png", 1)]
    assert rows[0].text == "a grey cat" and rows[1].text == "a photo of a cat"
    # Appending to a memory keeps its class indices and adds new names at the end.
    _, extended = resolve_sources(f"imagefolder:{tmp_path}", class_names=["dog", "bird"])
    assert extended == ["dog", "bird", "cat"]
