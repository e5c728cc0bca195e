"""The Tux Paint stamps from the Debian package, and the loader on a tiny fake tree."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ravis.data import MissingDataError, load_dataset, load_tuxpaint
from ravis.data.tuxpaint import DEFAULT_ROOT

needs_stamps = pytest.mark.skipif(not Path(DEFAULT_ROOT, "animals").is_dir(),
                                  reason="Debian package tuxpaint-stamps-default not installed")


@pytest.fixture(scope="module")
def stamps():
    return load_tuxpaint()


@needs_stamps
def test_counts_and_classes(stamps):
    assert len(stamps) >= 700
    assert 60 <= stamps.num_classes <= 90
    assert stamps.class_names == sorted(stamps.class_names)
    counts = stamps.class_counts()
    assert counts.min() >= 1 and counts.max() >= 10 * np.median(counts)  # long-tailed
    assert not any(i.endswith("_mirror.png") for i in stamps.ids)
    assert stamps.ids == sorted(stamps.ids)


@needs_stamps
def test_frog(stamps):
    i = stamps.ids.index("animals/amphibians/frog.png")
    assert stamps.captions[i] == "A frog."
    assert stamps.class_names[stamps.labels[i]] == "animals/amphibians"
    assert stamps.text_of(i) == "A frog."
    raw = Image.open(Path(DEFAULT_ROOT, "animals/amphibians/frog.png")).convert("RGBA")
    assert raw.getpixel((0, 0))[3] == 0 and raw.getpixel((0, 0))[:3] != (255, 255, 255)
    im = stamps.load_image(i)
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 255, 255)  # transparent corner flattened on white


@needs_stamps
def test_shallow_stamps_use_their_deepest_folder(stamps):
    shallow = [i for i, r in enumerate(stamps.ids) if r.count("/") == 1]
    assert shallow
    for i in shallow:
        assert stamps.class_names[stamps.labels[i]] == stamps.ids[i].split("/")[0]


@needs_stamps
def test_class_depth_one_and_spec():
    top = load_dataset("tuxpaint", class_depth=1)
    assert "animals" in top.class_names and all("/" not in c for c in top.class_names)
    assert 10 <= top.num_classes <= 20


def _fake_tree(root: Path):
    for rel, caption in [("animals/cats/cat.png", "A cat.\nfr.utf8=Un chat."),
                         ("animals/cats/deep/kitten.png", "A kitten."),
                         ("sports/ball.png", "  A ball.  ")]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (3, 3), (0, 0, 0, 0)).save(p)
        p.with_suffix(".txt").write_text(caption)
    Image.new("RGBA", (3, 3)).save(root / "animals/cats/cat_mirror.png")  # no .txt: skipped


def test_fake_tree(tmp_path):
    _fake_tree(tmp_path)
    ds = load_tuxpaint(tmp_path)
    assert ds.ids == ["animals/cats/cat.png", "animals/cats/deep/kitten.png", "sports/ball.png"]
    assert ds.captions == ["A cat.", "A kitten.", "A ball."]
    assert ds.class_names == ["animals/cats", "sports"]
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.load_image(2).getpixel((1, 1)) == (255, 255, 255)
    before = ds.fingerprint
    assert load_tuxpaint(tmp_path).fingerprint == before
    (tmp_path / "sports/ball.txt").write_text("A red ball.")
    assert load_tuxpaint(tmp_path).fingerprint != before


def test_missing_root_mentions_debian_package(tmp_path):
    with pytest.raises(MissingDataError, match="tuxpaint-stamps-default"):
        load_tuxpaint(tmp_path / "absent")
    with pytest.raises(MissingDataError, match="tuxpaint-stamps-default"):
        load_tuxpaint(tmp_path)  # exists, but no captioned stamps
