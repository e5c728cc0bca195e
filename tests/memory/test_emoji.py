"""The emoji collection on the real npm data (scripts/setup.sh fetches it): the loader, the
``emoji[:ROOT]`` memory source, ``ravis memory build --source emoji`` and the cached
memory of :func:`ravis.memory.collections.emoji_memory`, the last two on a trimmed copy of
the packages (a few of their real PNGs and emoji.json entries) to stay fast."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ravis.cli import main
from ravis.data import MissingDataError
from ravis.data.emoji import (ARTISTS, default_root, load_emoji, package_name,
                              package_versions)
from ravis.data.dataset import BadImageError
from ravis.memory import collections as emoji_collections
from ravis.memory.collections import emoji_memory
from ravis.memory.sharded import ShardedMemory
from ravis.data.sources import SourceError, read_rows, resolve_sources

CATEGORIES = {"Smileys & Emotion", "People & Body", "Component", "Animals & Nature",
              "Food & Drink", "Travel & Places", "Activities", "Objects", "Symbols", "Flags"}
#: Emoji of the trimmed collection (unified, as in the file names); every artist drew them.
SAMPLE = ["1f600", "1f438", "2b50", "1f1e8-1f1f4", "1f35f", "1f3b4", "1f4c5", "1f988"]


@pytest.fixture(scope="module")
def real_root():
    root = default_root()
    if not all((root / package_name(a) / "emoji.json").is_file() for a in ARTISTS):
        pytest.skip(f"emoji packages not in {root}: scripts/setup.sh fetches them")
    return root


@pytest.fixture(scope="module")
def real(real_root):
    return load_emoji(real_root)


@pytest.fixture(scope="module")
def trimmed(real_root, tmp_path_factory):
    """The three packages cut down to SAMPLE: their real package.json, PNGs and entries."""
    root = tmp_path_factory.mktemp("emoji")
    for artist in ARTISTS:
        trim(real_root, root, artist, SAMPLE)
    return root


def trim(real_root, root, artist, unified):
    src, dst = real_root / package_name(artist), root / package_name(artist)
    (dst / "img" / artist / "64").mkdir(parents=True)
    shutil.copy(src / "package.json", dst / "package.json")
    entries = [e for e in json.loads((src / "emoji.json").read_text())
               if e["unified"].lower() in unified]
    (dst / "emoji.json").write_text(json.dumps(entries))
    for e in entries:
        shutil.copy(src / "img" / artist / "64" / e["image"], dst / "img" / artist / "64")


def test_real_collection_has_every_artists_emoji(real):
    per_artist = {a: [e for e in real if e.artist == a] for a in ARTISTS}
    assert [e.artist for e in real] == sorted((e.artist for e in real), key=ARTISTS.index)
    for artist, images in per_artist.items():
        assert 1800 <= len(images) <= 2200, (artist, len(images))
    assert 5400 <= len(real) <= 6600
    assert len({e.key for e in real}) == len(real)  # ids unique over artists
    assert all(e.caption and e.caption == e.caption.lower() and e.caption == e.caption.strip()
               for e in real)
    by_key = {e.key: e for e in real}
    assert by_key["emoji/google/1f600"].caption == "grinning face"
    assert by_key["emoji/apple/1f438"].caption == "frog face"
    metas = [json.loads(e.meta) for e in real]
    assert {m["category"] for m in metas} == CATEGORIES
    assert json.loads(by_key["emoji/twitter/1f1e8-1f1f4"].meta)["category"] == "Flags"
    assert all(m["package"].startswith(f"emoji-datasource-{m['artist']}@") for m in metas)


def test_real_pngs_are_rgba_and_flatten_on_white(real):
    """Transparent corners must become white, not whatever colour the invisible pixels hold."""
    from ravis.data.images import open_image

    path = next(e.path for e in real if e.key == "emoji/google/1f600")
    with Image.open(path) as raw:
        assert raw.mode == "RGBA" and raw.size == (64, 64) and raw.getpixel((0, 0))[3] == 0
    assert open_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_source_rows_have_no_label_and_one_collection_per_artist(real_root, real):
    shards, class_names = resolve_sources("emoji", rows_per_shard=1000)
    assert class_names == []  # no downstream class set names these
    assert [s.collection for s in shards] == ["emoji-google"] * 2 + ["emoji-twitter"] * 2 \
        + ["emoji-apple"] * 2
    assert shards[0].input.startswith(f"emoji:{real_root}:emoji-datasource-google@")
    rows = [r for s in shards for r in read_rows(s, strict=True).rows]
    assert [r.key for r in rows] == [e.key for e in real]
    assert {r.label for r in rows} == {-1} and rows[0].json == real[0].meta


def test_missing_package_names_it(trimmed, tmp_path, capsys):
    root = tmp_path / "emoji"
    shutil.copytree(trimmed / package_name("google"), root / package_name("google"))
    with pytest.raises(MissingDataError, match=r"emoji-datasource-twitter is missing: the npm "
                                               r"package emoji-datasource-twitter is missing in "
                                               r".*; run scripts/setup\.sh"):
        load_emoji(root)
    shutil.copytree(trimmed / package_name("twitter"), root / package_name("twitter"))
    (root / package_name("apple")).mkdir()
    shutil.copy(trimmed / package_name("apple") / "package.json", root / package_name("apple"))
    with pytest.raises(MissingDataError, match=r"apple/emoji\.json is missing: the npm package "
                                               r"emoji-datasource-apple is incomplete"):
        resolve_sources(f"emoji:{root}")
    assert main(["memory", "build", "--source", f"emoji:{root}", "--out", str(tmp_path / "m"),
                 "--quiet"]) != 0
    assert "emoji-datasource-apple" in capsys.readouterr().err


def test_bad_emoji_json_names_the_file_and_entry(trimmed, tmp_path):
    root = tmp_path / "emoji"
    shutil.copytree(trimmed, root)
    path = root / package_name("twitter") / "emoji.json"
    entries = json.loads(path.read_text())
    del entries[3]["unified"]
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"twitter/emoji\.json: entry 3 lacks"):
        load_emoji(root)
    path.write_text("[]")
    for artist in ("google", "apple"):
        (root / package_name(artist) / "emoji.json").write_text("[]")
    with pytest.raises(SourceError, match="no emoji PNG"):
        resolve_sources(f"emoji:{root}")


def test_build_cli_reads_back(trimmed, tmp_path, ravis_cache):
    from ravis.data.images import open_image
    from ravis.encoders import create_image_encoder, create_text_encoder, l2_normalize

    out = tmp_path / "mem"
    assert main(["memory", "build", "--source", f"emoji:{trimmed}", "--out", str(out),
                 "--rows-per-shard", "5", "--quiet", "--cache", str(ravis_cache)]) == 0
    mem = ShardedMemory.open(out, verify=True)
    expected = load_emoji(trimmed)
    assert mem.count == len(expected) == 3 * len(SAMPLE) and len(mem.shard_names) == 6
    tables = [mem.meta(i).to_pydict() for i in range(len(mem.shard_names))]
    meta = {c: [v for t in tables for v in t[c]] for c in ("id", "text", "source", "label", "json")}
    assert meta["text"] == [e.caption for e in expected]
    assert meta["label"] == [-1] * mem.count and set(mem.labels_at(np.arange(mem.count))) == {-1}
    assert meta["source"] == [f"emoji-{e.artist}" for e in expected]
    assert [i.split("/", 1)[1] for i in meta["id"]] == [e.key for e in expected]
    assert json.loads(meta["json"][0])["category"] == json.loads(expected[0].meta)["category"]
    # The keys are the default encoder's embeddings of the PNGs flattened on white.
    enc, text = create_image_encoder("efficientnet_lite0"), create_text_encoder("minilm")
    rows = np.arange(0, mem.count, 7)
    want = l2_normalize(enc.encode_pixels(np.stack(
        [enc.preprocess(open_image(expected[r].path)) for r in rows])))
    np.testing.assert_allclose(mem.keys_at(rows).astype(np.float32), want, atol=2e-3)
    values = text.encode_texts([expected[r].caption for r in rows])
    np.testing.assert_allclose(mem.values_at(rows).astype(np.float32), values, atol=2e-3)


def test_emoji_memory_is_built_once_and_never_half_served(trimmed, tmp_path, ravis_cache,
                                                          monkeypatch):
    cache = tmp_path / "cache"
    path = emoji_memory(cache, root=trimmed)
    mem = ShardedMemory.open(path, verify=True)
    assert mem.count == 3 * len(SAMPLE) and mem.manifest["sources"] == [f"emoji:{trimmed}"]
    assert mem.key_encoder.startswith("efficientnet_lite0-")
    assert [p.name for p in (cache / "memories").iterdir() if p.is_dir()] == [path.name]

    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(emoji_collections, "build_sharded_memory", no_build)
    assert emoji_memory(cache, root=trimmed) == path
    monkeypatch.undo()

    # A damaged PNG stops the build; nothing appears under a final name, and the shards
    # finished before it wait in the hidden folder for the rerun.
    broken = tmp_path / "broken"
    shutil.copytree(trimmed, broken)
    png = broken / package_name("apple") / "img" / "apple" / "64" / "1f600.png"
    png.write_bytes(png.read_bytes()[:300])
    with pytest.raises(BadImageError, match="1f600.png"):
        emoji_memory(cache, root=broken)
    folders = [p for p in (cache / "memories").iterdir() if p.is_dir()]
    assert [p for p in folders if not p.name.startswith(".")] == [path]
    partial, = [p for p in folders if p.name.endswith(".partial")]
    assert [s["input"] for s in ShardedMemory.open(partial).manifest["shards"]] == [
        f"emoji:{broken.resolve()}:emoji-datasource-{a}@{v}[0:{len(SAMPLE)}]"
        for a, v in package_versions(broken, ("google", "twitter")).items()]


def test_the_emoji_imagefolder_script_writes_one_folder_per_subcategory(real_root, tmp_path):
    """benchmarks/emoji_imagefolder.py: the long-tailed ImageFolder the README measures."""
    import importlib.util
    from pathlib import Path

    from ravis.data import load_dataset

    path = Path(__file__).parents[2] / "benchmarks" / "emoji_imagefolder.py"
    spec = importlib.util.spec_from_file_location("emoji_imagefolder", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path / "if"), "--root", str(real_root)]) == 0
    data = load_dataset(f"imagefolder:{tmp_path / 'if'}", class_depth=1)
    counts = np.bincount(data.labels)
    assert len(data) == len(load_emoji(real_root)) and len(data.class_names) == 99
    assert counts.min() <= 5 and counts.max() >= 500  # long-tailed
    assert "face-smiling" in data.class_names
