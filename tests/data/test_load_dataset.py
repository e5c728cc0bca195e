"""The dataset spec dispatcher and the package's public names."""

import pytest

import ravis.data
from ravis.data import _split_paths, load_dataset


def test_public_names_exist():
    for name in ravis.data.__all__:
        assert hasattr(ravis.data, name), name


@pytest.mark.parametrize("spec", ["nope", "imagefolder", "imagefolder:", "fashion-mnist:x",
                                  "tuxpaint:/x", "lt-split:"])
def test_unknown_or_malformed_spec(spec):
    with pytest.raises(ValueError, match="spec"):
        load_dataset(spec)


@pytest.mark.parametrize("text, expected", [
    ("/d/img:/d/train.txt:/d/test.txt", ["/d/img", "/d/train.txt", "/d/test.txt"]),
    ("img:train.txt:odd:name.txt", ["img", "train.txt", "odd:name.txt"]),  # last keeps colons
    (r"C:\img:D:/lists/train.txt:test.txt", [r"C:\img", "D:/lists/train.txt", "test.txt"]),
    ("a:b", ["a", "b"]),
])
def test_split_paths(text, expected):
    assert _split_paths(text, 3) == expected
