"""Long-tail split files (ImageNet_LT_train.txt style)."""

import re

import pytest
from PIL import Image

from ravis.data import BadImageError, load_dataset, load_lt_splits, load_split_file


def _setup(tmp_path):
    root = tmp_path / "images"
    for rel in ["train/n1/a.jpg", "train/n2/b b.jpg", "val/n1/c.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (5, 5), (200, 10, 10)).save(root / rel)
    train = tmp_path / "LT_train.txt"
    train.write_text("train/n1/a.jpg 0\n\ntrain/n2/b b.jpg 2\ntrain/n1/missing.jpg 0\n")
    test = tmp_path / "LT_test.txt"
    test.write_text("val/n1/c.jpg 0\n")
    return root, train, test


def test_parse(tmp_path):
    root, train, _ = _setup(tmp_path)
    ds = load_split_file(train, root)
    assert ds.ids == ["train/n1/a.jpg", "train/n2/b b.jpg", "train/n1/missing.jpg"]
    assert ds.labels.tolist() == [0, 2, 0]
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    assert ds.name == "LT_train"
    r, g, b = ds.load_image(1).getpixel((0, 0))
    assert abs(r - 200) + abs(g - 10) + abs(b - 10) <= 6  # JPEG is lossy
    # Missing files surface lazily, as a BadImageError naming the path.
    with pytest.raises(BadImageError, match=re.escape(str(root / "train/n1/missing.jpg"))):
        ds.load_image(2)


def test_splits_share_class_names(tmp_path):
    root, train, test = _setup(tmp_path)
    splits = load_lt_splits(root, train, test)
    assert splits.test.class_names == splits.train.class_names == ["class_0", "class_1", "class_2"]
    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\nshark\n\n")
    splits = load_lt_splits(root, train, test, class_names_file=names)
    assert splits.train.class_names == ["tench", "goldfish", "shark"]
    assert splits.test.text_of(0) == "a photo of a tench"
    names.write_text("tench\ngoldfish\n")
    with pytest.raises(ValueError, match=re.escape(f"{train}:3") + ".*no class name"):
        load_lt_splits(root, train, test, class_names_file=names)


def test_fingerprint(tmp_path):
    root, train, test = _setup(tmp_path)
    fp = load_split_file(train, root).fingerprint
    assert load_split_file(train, root).fingerprint == fp
    assert load_split_file(train, tmp_path).fingerprint != fp  # other image root
    train.write_text(train.read_text() + "train/n1/z.jpg 1\n")
    assert load_split_file(train, root).fingerprint != fp


@pytest.mark.parametrize("line, problem", [
    ("just_a_path.jpg", "expected"),
    ("a.jpg zero", "not an integer"),
    ("a.jpg -1", "negative"),
])
def test_bad_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "split.txt"
    path.write_text(f"ok/a.jpg 0\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2:") + f".*{problem}"):
        load_split_file(path, tmp_path)


def test_spec(tmp_path):
    root, train, test = _setup(tmp_path)
    splits = load_dataset(f"lt-split:{root}:{train}:{test}")
    assert len(splits.train) == 3 and len(splits.test) == 1
    with pytest.raises(ValueError, match="lt-split:IMAGE_ROOT"):
        load_dataset(f"lt-split:{root}:{train}")
