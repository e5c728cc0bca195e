"""ImageFolder loading (nested folders, class_depth, sidecar captions) and stratified_split."""

import re

import numpy as np
import pytest
from PIL import Image

from ravis.data import BadImageError, load_dataset, load_imagefolder, stratified_split

FILES = [
    "animals/cats/a.png", "animals/cats/b.jpg", "animals/dogs/c.png", "animals/dogs/d.PNG",
    "animals/e.png", "vehicles/cars/f.png", "vehicles/cars/g.bmp", "vehicles/boats/deep/h.png",
]


def _make(root, files=FILES):
    for i, rel in enumerate(files):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".jpg": "JPEG", ".bmp": "BMP"}.get(p.suffix.lower(), "PNG")
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(p, format=fmt)
    return root


def test_class_depth_1(tmp_path):
    _make(tmp_path)
    (tmp_path / "animals/notes.md").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / ".hidden/x.png")
    ds = load_imagefolder(tmp_path)
    assert ds.ids == sorted(FILES)
    assert ds.class_names == ["animals", "vehicles"]
    assert ds.class_counts().tolist() == [5, 3]
    assert ds.name == tmp_path.name
    assert ds.load_image(0).mode == "RGB"
    assert ds.captions == [None] * len(FILES)


def test_class_depth_2_shallow_images_use_deepest_folder(tmp_path):
    _make(tmp_path)
    ds = load_imagefolder(tmp_path, class_depth=2)
    assert ds.class_names == ["animals", "animals/cats", "animals/dogs",
                              "vehicles/boats", "vehicles/cars"]
    by_id = {i: ds.class_names[c] for i, c in zip(ds.ids, ds.labels)}
    assert by_id["animals/e.png"] == "animals"
    assert by_id["vehicles/boats/deep/h.png"] == "vehicles/boats"
    assert load_imagefolder(tmp_path, class_depth=2).fingerprint == ds.fingerprint
    assert load_imagefolder(tmp_path, class_depth=1).fingerprint != ds.fingerprint


def test_sidecar_captions(tmp_path):
    _make(tmp_path)
    (tmp_path / "animals/cats/a.txt").write_text("\n\n  A grey cat on a sofa. \nsecond line\n")
    (tmp_path / "animals/dogs/c.txt").write_text("   \n")
    ds = load_imagefolder(tmp_path)
    caps = dict(zip(ds.ids, ds.captions))
    assert caps["animals/cats/a.png"] == "A grey cat on a sofa."
    assert caps["animals/dogs/c.png"] is None
    i = ds.ids.index("animals/cats/b.jpg")
    assert ds.text_of(i) == "a photo of a animals"


def test_fingerprint_follows_content(tmp_path):
    _make(tmp_path)
    before = load_imagefolder(tmp_path).fingerprint
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "animals/cats/a.png")
    assert load_imagefolder(tmp_path).fingerprint != before


def test_errors_name_the_folder_or_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent"))):
        load_imagefolder(tmp_path / "absent")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*no images"):
        load_imagefolder(tmp_path)
    _make(tmp_path)
    Image.new("RGB", (2, 2)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="loose.png"):
        load_imagefolder(tmp_path)
    with pytest.raises(ValueError, match="class_depth"):
        load_imagefolder(tmp_path / "vehicles", class_depth=0)


def test_bad_image_reported_on_load(tmp_path):
    _make(tmp_path)
    (tmp_path / "animals/cats/broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    ds = load_imagefolder(tmp_path)
    i = ds.ids.index("animals/cats/broken.png")
    with pytest.raises(BadImageError, match="broken.png"):
        ds.load_image(i)


def test_spec_keeps_colons_in_path(tmp_path):
    root = _make(tmp_path / "with:colon")
    ds = load_dataset(f"imagefolder:{root}", class_depth=2)
    assert len(ds) == len(FILES) and ds.num_classes == 5


def _labelled(counts):
    from ravis.data import ImageDataset
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(1)
    labels = labels[rng.permutation(len(labels))]  # interleave the classes
    n = len(labels)
    return ImageDataset(name="toy", ids=[f"i{j}" for j in range(n)], labels=labels,
                        class_names=[f"c{c}" for c in range(len(counts))], captions=[None] * n,
                        fingerprint="toy", loader=lambda j: Image.new("RGB", (1, 1)))


def test_stratified_split_properties():
    counts = [50, 10, 3, 2, 1, 7]
    ds = _labelled(counts)
    splits = stratified_split(ds, test_fraction=0.2, seed=0)
    train, test = set(splits.train.ids), set(splits.test.ids)
    assert not train & test and len(train | test) == len(ds)
    tr, te = splits.train.class_counts(), splits.test.class_counts()
    assert te.tolist() == [10, 2, 1, 1, 0, 1]  # round(n * 0.2), at least 1 if n >= 2
    assert (tr[np.array(counts) >= 2] >= 1).all() and tr[4] == 1
    assert splits.train.ids == sorted(splits.train.ids, key=lambda s: int(s[1:]))  # order kept
    assert splits.train.name == "toy-train" and splits.test.name == "toy-test"
    again = stratified_split(ds, test_fraction=0.2, seed=0)
    assert again.test.ids == splits.test.ids and again.test.fingerprint == splits.test.fingerprint
    other = stratified_split(ds, test_fraction=0.2, seed=1)
    assert other.test.ids != splits.test.ids
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(ds, test_fraction=1.0)


def test_stratified_split_of_imagefolder(tmp_path):
    _make(tmp_path)
    splits = stratified_split(load_imagefolder(tmp_path, class_depth=2), test_fraction=0.5)
    # classes of 2 split 1/1; the single-image classes stay in train
    assert splits.test.class_counts().tolist() == [0, 1, 1, 0, 1]
    assert splits.train.class_counts().tolist() == [1, 1, 1, 1, 1]


def test_a_name_that_is_not_utf8_is_read_and_shown_escaped(tmp_path):
    """A Latin-1 file or folder name is read like any other; ids and class names, which are
    UTF-8 text, show its undecodable bytes as \\xNN. It used to abort the run."""
    import os

    _make(tmp_path)
    bad = os.path.join(os.fsencode(tmp_path), b"animals", b"cats", b"caf\xe9.png")
    Image.new("RGB", (4, 4), "red").save(open(bad, "wb"), format="PNG")
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"anim\xe4ls"))  # a whole folder too
    Image.new("RGB", (4, 4)).save(open(os.path.join(os.fsencode(tmp_path), b"anim\xe4ls", b"x.png"), "wb"),
                                  format="PNG")
    ds = load_imagefolder(tmp_path)
    assert "animals/cats/caf\\xe9.png" in ds.ids and "anim\\xe4ls/x.png" in ds.ids
    assert "anim\\xe4ls" in ds.class_names
    assert ds.load_image(ds.ids.index("animals/cats/caf\\xe9.png")).getpixel((0, 0)) == (255, 0, 0)
    for text in [ds.fingerprint, *ds.ids, *ds.class_names]:
        text.encode("utf-8")  # what manifests and parquet files hold
