"""The open_clip, timm and Hugging Face adapters on tiny random models saved to tmp_path.

Nothing here touches the network: every model is built from a config with a fixed seed, saved,
and loaded back through the registry spec a user would write. A case whose library is not
installed is skipped; a library that is installed but fails to import (torchvision missing,
say) fails the test rather than hiding behind a skip.
"""

from __future__ import annotations

import os

# Set before transformers or huggingface_hub is imported: both read them once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ravis.encoders import (ImageEncoder, TextEncoder, create_image_encoder,  # noqa: E402
                            create_text_encoder)

TIMM_KW = {"img_size": 32, "depth": 2}
# vocab_size is the size of open_clip's bundled tokenizer, which the text tower then uses.
OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
WORDS = "a photo of the cat dog bird car red blue small big".split()
TEXTS = ["a photo of a cat", "dog", "a small red car", "a big blue bird of the photo", "zebra"]


def require(module: str) -> None:
    """Skip when the library is not installed (not when it is installed but broken)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def _library(name: str):
    from ravis.encoders.timm_adapter import import_without_torchvision

    return import_without_torchvision(name)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    grey = Image.fromarray(rng.integers(0, 256, (45, 20), dtype=np.uint8), mode="L")
    rgba = Image.fromarray(rng.integers(0, 256, (36, 36, 4), dtype=np.uint8), mode="RGBA")
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    return [rgb, grey, rgba, small]


def _save_safetensors(model: torch.nn.Module, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


# --- builders: each writes a model with the given seed and returns the spec and kwargs ---

def timm_vit(tmp_path, seed):
    torch.manual_seed(seed)
    # A classifier in the checkpoint, as in real ones: the adapter must drop it.
    model = _library("timm").create_model("vit_tiny_patch16_224", num_classes=10, **TIMM_KW)
    _save_safetensors(model, tmp_path / "vit.safetensors")
    return f"timm:vit_tiny_patch16_224@{tmp_path / 'vit.safetensors'}", {"model_kwargs": TIMM_KW}


def timm_resnet(tmp_path, seed):
    torch.manual_seed(seed)
    model = _library("timm").create_model("resnet10t", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "resnet.pth")  # read back with weights_only=True
    return f"timm:resnet10t@{tmp_path / 'resnet.pth'}", {}


def open_clip_json(tmp_path, seed):
    open_clip = _library("open_clip")
    config = tmp_path / "tiny-clip.json"
    config.write_text(json.dumps(OPEN_CLIP_CFG))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    _save_safetensors(open_clip.create_model("tiny-clip"), tmp_path / "tiny-clip.safetensors")
    return f"open_clip:{config}@{tmp_path / 'tiny-clip.safetensors'}", {}


OPEN_CLIP_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize_mode": "longest",
                        "interpolation": "bilinear", "fill_color": 128}


def open_clip_local_dir(tmp_path, seed):
    open_clip = _library("open_clip")
    folder = tmp_path / "clip-dir"
    folder.mkdir(exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": OPEN_CLIP_PREPROCESS}))
    (tmp_path / "cfg.json").write_text(json.dumps(OPEN_CLIP_CFG))
    open_clip.add_model_config(tmp_path / "cfg.json")
    torch.manual_seed(seed)
    _save_safetensors(open_clip.create_model("cfg"), folder / "open_clip_model.safetensors")
    return f"open_clip:local-dir:{folder}", {}


def _save_tokenizer(folder) -> int:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            cls_token="[CLS]", sep_token="[SEP]",
                            model_max_length=32).save_pretrained(folder)
    return len(vocab)


VIT_PREPROCESSOR = {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2,
                    "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
CLIP_PREPROCESSOR = {"do_resize": True, "size": {"shortest_edge": 40}, "do_center_crop": True,
                     "crop_size": {"height": 32, "width": 32}, "resample": 3, "do_normalize": True,
                     "image_mean": [0.48145466, 0.4578275, 0.40821073],
                     "image_std": [0.26862954, 0.26130258, 0.27577711]}


def _vit_config():
    from transformers import ViTConfig

    return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     image_size=32, patch_size=8)


def hf_vit(tmp_path, seed, pooler=True):
    from transformers import ViTModel

    folder = tmp_path / ("vit" if pooler else "vit-no-pooler")
    torch.manual_seed(seed)
    ViTModel(_vit_config(), add_pooling_layer=pooler).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(VIT_PREPROCESSOR))
    return f"hf:{folder}", {}


def hf_vit_no_pooler(tmp_path, seed):
    return hf_vit(tmp_path, seed, pooler=False)


def hf_clip(tmp_path, seed):
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path / "clip"
    n_vocab = _save_tokenizer(folder)
    config = CLIPConfig(
        text_config={"vocab_size": n_vocab, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 32,
                     "eos_token_id": 3, "pad_token_id": 0, "bos_token_id": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR))
    return f"hf:{folder}", {}


def hf_bert(tmp_path, seed):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    n_vocab = _save_tokenizer(folder)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32)).save_pretrained(folder)
    return f"hf:{folder}", {}


# case -> (library it needs, builder, embedding dim)
IMAGE_CASES = {
    "timm-vit": ("timm", timm_vit, 192),
    "timm-resnet": ("timm", timm_resnet, 512),
    "open_clip-json": ("open_clip", open_clip_json, 16),
    "open_clip-local-dir": ("open_clip", open_clip_local_dir, 16),
    "hf-vit": ("transformers", hf_vit, 32),
    "hf-vit-no-pooler": ("transformers", hf_vit_no_pooler, 32),
    "hf-clip": ("transformers", hf_clip, 16),
}
TEXT_CASES = {
    "open_clip-json": ("open_clip", open_clip_json, 16),
    "hf-bert": ("transformers", hf_bert, 32),
    "hf-clip": ("transformers", hf_clip, 16),
}


def _assert_unit_rows(emb: np.ndarray, n: int, dim: int) -> None:
    assert emb.shape == (n, dim) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_encoder(case, tmp_path):
    library, build, dim = IMAGE_CASES[case]
    require(library)
    spec, kwargs = build(tmp_path, seed=0)
    # Keyword arguments make the registry build afresh rather than return its cached instance.
    enc = create_image_encoder(spec, device="cpu", **kwargs)
    assert isinstance(enc, ImageEncoder) and enc.name == spec and enc.dim == dim

    arrays = [enc.preprocess(im) for im in _images()]  # RGB, grey (L), RGBA, smaller than the input
    side = arrays[0].shape[-1]
    assert all(a.shape == (3, side, side) and a.dtype == np.float32 for a in arrays)
    x = np.stack(arrays)  # (4, 3, side, side)
    emb = enc.encode_pixels(x)
    _assert_unit_rows(emb, len(x), dim)
    assert np.array_equal(enc.encode_pixels(x), emb)
    np.testing.assert_allclose(enc.encode_pixels(x[1:2]), emb[1:2], atol=1e-5)  # rows are independent

    again = create_image_encoder(spec, device="cpu", **kwargs)
    assert again.fingerprint() == enc.fingerprint()
    np.testing.assert_allclose(again.encode_pixels(x), emb, atol=1e-6)

    build(tmp_path, seed=1)  # other weights at the same path
    changed = create_image_encoder(spec, device="cpu", **kwargs)
    assert changed.fingerprint() != enc.fingerprint()
    assert not np.allclose(changed.encode_pixels(x), emb, atol=1e-4)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_trainable_network_computes_the_embedding_and_trains_a_copy(case, tmp_path):
    """The network fine-tuning trains (train.finetune_encoder): the encoder's own embedding
    before normalisation, with gradients, in a copy that leaves the encoder as it was."""
    from ravis.encoders.trainable import FineTunedEncoder, trainable_network

    library, build, dim = IMAGE_CASES[case]
    require(library)
    spec, kwargs = build(tmp_path, seed=0)
    enc = create_image_encoder(spec, device="cpu", **kwargs)
    x = np.stack([enc.preprocess(im) for im in _images()])
    net = trainable_network(enc)
    feats = net(torch.from_numpy(x))
    np.testing.assert_allclose(torch.nn.functional.normalize(feats, dim=1).detach().numpy(),
                               enc.encode_pixels(x), atol=1e-5)
    before = enc.encode_pixels(x)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    feats[:, 0].sum().backward()
    opt.step()
    assert np.array_equal(enc.encode_pixels(x), before)  # the encoder itself is untouched
    tuned = FineTunedEncoder(enc, net)
    assert not np.allclose(tuned.encode_pixels(x), before, atol=1e-5)
    assert tuned.dim == dim and tuned.fingerprint() != enc.fingerprint()


@pytest.mark.parametrize("case", TEXT_CASES)
def test_text_encoder(case, tmp_path):
    library, build, dim = TEXT_CASES[case]
    require(library)
    spec, kwargs = build(tmp_path, seed=0)
    enc = create_text_encoder(spec, device="cpu", **kwargs)
    assert isinstance(enc, TextEncoder) and enc.name == spec and enc.dim == dim

    emb = enc.encode_texts(TEXTS)
    _assert_unit_rows(emb, len(TEXTS), dim)
    assert np.array_equal(enc.encode_texts(TEXTS), emb)
    assert np.abs(emb[0] - emb[1]).max() > 1e-4
    # Padding must not leak into the pooled embedding: one at a time equals all together.
    alone = np.concatenate([enc.encode_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(alone, emb, atol=1e-5)
    assert enc.encode_texts([]).shape == (0, dim)

    assert create_text_encoder(spec, device="cpu", **kwargs).fingerprint() == enc.fingerprint()
    build(tmp_path, seed=1)
    changed = create_text_encoder(spec, device="cpu", **kwargs)
    assert changed.fingerprint() != enc.fingerprint()
    assert not np.allclose(changed.encode_texts(TEXTS), emb, atol=1e-4)


def test_timm_checkpoint_of_another_model_is_refused(tmp_path):
    require("timm")
    torch.manual_seed(0)
    model = _library("timm").create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=1)
    _save_safetensors(model, tmp_path / "shallow.safetensors")
    with pytest.raises(ValueError, match="does not match"):
        create_image_encoder(f"timm:vit_tiny_patch16_224@{tmp_path / 'shallow.safetensors'}",
                             model_kwargs=TIMM_KW)


def test_hf_folder_of_another_kind_is_input_error(tmp_path):
    """A folder whose config.json names no transformers model is the user's input, named as
    such, not a bug in ravis (the CLI prints an InputError as one line)."""
    require("transformers")
    from ravis.errors import InputError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(InputError, match=f"hf:{tmp_path}: transformers cannot load it"):
        create_image_encoder(f"hf:{tmp_path}", device="cpu")


def test_timm_preprocess_follows_pretrained_cfg(tmp_path):
    require("timm")
    spec, _ = timm_resnet(tmp_path, seed=0)
    enc = create_image_encoder(spec, device="cpu")
    cfg = _library("timm").data.resolve_model_data_config(enc.model)
    assert enc.cfg["size"] == cfg["input_size"][-1] and enc.cfg["crop_pct"] == cfg["crop_pct"]
    grey = Image.new("RGB", (300, 200), (128, 128, 128))
    expected = (128 / 255 - np.array(cfg["mean"])) / np.array(cfg["std"])
    np.testing.assert_allclose(enc.preprocess(grey)[:, 5, 7], expected, atol=1e-5)


def test_open_clip_preprocess_follows_model_config(tmp_path):
    require("open_clip")
    spec, _ = open_clip_local_dir(tmp_path, seed=0)
    enc = create_image_encoder(spec, device="cpu")
    assert {k: enc.cfg[k] for k in OPEN_CLIP_PREPROCESS} == OPEN_CLIP_PREPROCESS
    # 'longest' fits a wide image and pads above and below with the fill colour.
    wide = Image.new("RGB", (64, 16), (255, 255, 255))
    x = enc.preprocess(wide)  # (3, 32, 32)
    np.testing.assert_allclose(x[:, 0, 0], (128 / 255 - 0.5) / 0.25, atol=1e-6)
    np.testing.assert_allclose(x[:, 16, 16], (1 - 0.5) / 0.25, atol=1e-6)


def test_open_clip_unknown_pretrained_tag_is_refused(tmp_path):
    require("open_clip")
    spec, _ = open_clip_json(tmp_path, seed=0)
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        create_image_encoder(spec.split("@")[0] + "@no_such_tag", device="cpu")


def _processor_class(*candidates: str):
    """The first importable of "module:Class" (transformers 5 names its PIL processors ...Pil)."""
    for candidate in candidates:
        module, _, name = candidate.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    pytest.skip(f"none of {candidates} in this transformers")


VIT_PROCESSORS = ("transformers.models.vit.image_processing_pil_vit:ViTImageProcessorPil",
                  "transformers.models.vit.image_processing_vit:ViTImageProcessor")
CLIP_PROCESSORS = ("transformers.models.clip.image_processing_pil_clip:CLIPImageProcessorPil",
                   "transformers.models.clip.image_processing_clip:CLIPImageProcessor")


@pytest.mark.parametrize("case,processors", [(hf_vit, VIT_PROCESSORS), (hf_clip, CLIP_PROCESSORS)])
def test_hf_preprocess_matches_transformers_processor(case, processors, tmp_path):
    require("transformers")
    spec, _ = case(tmp_path, seed=0)
    enc = create_image_encoder(spec, device="cpu")
    config = json.loads((tmp_path / spec.partition(":")[2] / "preprocessor_config.json").read_text())
    reference = _processor_class(*processors)(**config)
    # Sizes where both round the resized side alike (60 x 80 -> 40 x 53, then the crop of 32).
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    expected = reference(image, return_tensors="np")["pixel_values"][0]  # (3, 32, 32)
    got = enc.preprocess(image)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_hf_uses_cls_token_when_the_pooler_was_not_saved(tmp_path):
    require("transformers")
    spec, _ = hf_vit_no_pooler(tmp_path, seed=0)
    with_pooler = create_image_encoder(hf_vit(tmp_path, seed=0)[0], device="cpu")
    enc = create_image_encoder(spec, device="cpu")
    assert (enc.pooling, with_pooler.pooling) == ("cls", "auto")
    x = np.stack([enc.preprocess(im) for im in _images()])
    with torch.no_grad():
        cls = enc.model(pixel_values=torch.from_numpy(x)).last_hidden_state[:, 0].numpy()  # (B, 32)
    np.testing.assert_allclose(enc.encode_pixels(x), cls / np.linalg.norm(cls, axis=1, keepdims=True),
                               atol=1e-5)


def test_importing_the_libraries_leaves_torchvision_absent():
    """timm and open_clip import torchvision; where it is missing, the stand-ins must not leak."""
    require("timm")
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: no stand-ins are used")
    _library("timm")
    if importlib.util.find_spec("open_clip") is not None:
        open_clip = _library("open_clip")
        with pytest.raises(ImportError, match="needs torchvision"):
            open_clip.image_transform(32, is_train=False)
    assert importlib.util.find_spec("torchvision") is None
    assert not [m for m in sys.modules if m.partition(".")[0] == "torchvision"]
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import is_torchvision_available

        assert not is_torchvision_available()


def test_open_clip_network_copies_the_image_tower_only(tmp_path):
    """CLIP's encode_image is its image tower: the text tower stays out of fine-tuning."""
    from ravis.encoders.trainable import trainable_network

    require("open_clip")
    spec, kwargs = open_clip_json(tmp_path, seed=0)
    enc = create_image_encoder(spec, device="cpu", **kwargs)
    net = trainable_network(enc)
    assert net.net is not enc.model.visual
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in enc.model.visual.parameters())
