"""Fine-tuning the encoder with the fusion module: a step moves the encoder's weights (and
only a copy of them), a run killed mid-epoch resumes to the same weights, the torch
EfficientNet-Lite0 computes what the ONNX graph does, and the keys policy does what it says."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ravis.config import ConfigError, TrainConfig, load_preset
from ravis.data.dataset import ImageDataset
from ravis.encoders.trainable import FeatureNet, FineTunedEncoder, trainable_network
from ravis.fusion import RetrievalClassifier, create_fusion
from ravis.training import joint as ft
from ravis.training.trainer import FitData
from ravis.training.data import MemoryTensors, QuerySet

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"
C, N, K, M = 3, 24, 4, 10


def _dataset(n: int = N) -> ImageDataset:
    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]
    labels = np.arange(n) % C
    arrays = [np.clip(np.array(colours[c]) + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
              for c in labels]
    return ImageDataset(name="colours", ids=[f"img{i}" for i in range(n)], labels=labels.astype(np.int64),
                        class_names=["red", "green", "blue"], captions=[None] * n, fingerprint="colours",
                        loader=lambda i: Image.fromarray(arrays[i]))


class _TinyNet(torch.nn.Module):
    """A conv net on (B, 3, 16, 16) float pixels, as the torch adapters' networks take."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x)).relu().mean((2, 3))


def _features(net, x):
    return net(x.float())


class _Encoder:
    name, dim = "tiny-conv", 8

    def __init__(self):
        torch.manual_seed(0)
        self.net = _TinyNet().eval()

    def fingerprint(self):
        return "tiny-conv-0"

    def preprocess(self, image):
        return np.asarray(image.resize((16, 16)), dtype=np.float32).transpose(2, 0, 1) / 255.0

    def network(self):
        return FeatureNet(copy.deepcopy(self.net), _features)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    encoder = _Encoder()
    net = trainable_network(encoder)
    fusion = RetrievalClassifier(create_fusion("mam", 8, 8, num_layers=1), 8, C)
    joint = ft.JointModel(net, fusion)
    rng = np.random.default_rng(seed)
    memory = MemoryTensors.from_numpy(rng.normal(size=(M, 8)), rng.normal(size=(M, 8)))
    labels = np.arange(N) % C
    queries = QuerySet.from_numpy(rng.normal(size=(N, 8)), rng.integers(0, M, (N, K)), labels)
    pixels = ft.Pixels(_dataset(), encoder.preprocess, workers=2)
    return encoder, joint, memory, queries, pixels


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"finetune_epochs": 2, "finetune_batch_size": 8, "encoder_lr": 1e-2,
                          "finetune_lr": 1e-2, "checkpoint_every": 0, "seed": 3, **kw})


def test_a_step_moves_the_encoder_weights_of_a_copy():
    encoder, joint, memory, queries, pixels = _setup()
    before = copy.deepcopy(joint.encoder.state_dict())
    ft.finetune(joint, ft.Images(pixels, np.arange(N)), FitData(queries, memory, [8, 8, 8]),
                _cfg(finetune_epochs=1), tau=0.0)
    moved = [k for k, v in joint.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert "net.conv.weight" in moved
    # batch norm keeps its statistics (FeatureNet stays in evaluation mode)
    assert torch.equal(joint.encoder.net.bn.running_mean, before["net.bn.running_mean"])
    assert not joint.encoder.training and not joint.encoder.net.bn.training
    # the encoder it was copied from is untouched
    assert torch.equal(encoder.net.conv.weight, before["net.conv.weight"])
    pixels.close()


def test_fine_tuned_encoder_embeds_with_the_trained_weights():
    encoder, joint, memory, queries, pixels = _setup()
    ft.finetune(joint, ft.Images(pixels, np.arange(N)), FitData(queries, memory, [8, 8, 8]),
                _cfg(finetune_epochs=1), tau=0.0)
    tuned = FineTunedEncoder(encoder, joint.encoder)
    x = np.stack([encoder.preprocess(_dataset().load_image(i)) for i in range(4)])
    expected = torch.nn.functional.normalize(joint.encoder(torch.from_numpy(x)), dim=1).detach().numpy()
    np.testing.assert_allclose(tuned.encode_pixels(x), expected, atol=1e-6)
    frozen = torch.nn.functional.normalize(encoder.net(torch.from_numpy(x)), dim=1).detach().numpy()
    assert not np.allclose(tuned.encode_pixels(x), frozen, atol=1e-4)
    assert tuned.fingerprint() != encoder.fingerprint() and tuned.fingerprint().startswith("tiny-conv-0+")
    pixels.close()


def test_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = _cfg()
    _, joint, memory, queries, pixels = _setup()
    val_rows = np.arange(18, N)
    train, val = queries.subset(np.arange(18)), queries.subset(val_rows)
    images, data = ft.Images(pixels, np.arange(18), val_rows), FitData(train, memory, [8, 8, 8], val)
    whole = ft.finetune(joint, images, data, cfg, tau=0.5)
    reference = copy.deepcopy(joint.state_dict())

    _, joint, memory, queries, pixels = _setup()
    calls = {"n": 0}
    real = ft.lace_loss

    def dies_at_step_4(*args, **kwargs):  # the second epoch's first step (3 steps per epoch)
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    ckpt = tmp_path / "ft.ckpt.safetensors"
    monkeypatch.setattr(ft, "lace_loss", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(joint, ft.Images(pixels, np.arange(18), val_rows), FitData(train, memory, [8, 8, 8], val),
                    cfg, tau=0.5, checkpoint=ckpt)
    monkeypatch.setattr(ft, "lace_loss", real)
    assert ckpt.exists()
    _, joint, memory, queries, pixels = _setup()  # a fresh process: nothing but the checkpoint
    resumed = ft.finetune(joint, ft.Images(pixels, np.arange(18), val_rows),
                          FitData(train, memory, [8, 8, 8], val), cfg, tau=0.5, checkpoint=ckpt, resume=True)
    for k, v in joint.state_dict().items():
        torch.testing.assert_close(v, reference[k], rtol=0, atol=0, msg=k)
    assert resumed.history == whole.history and resumed.best_epoch == whole.best_epoch
    assert resumed.initial_score == whole.initial_score is not None


def test_flip_mirrors_the_width_axis_of_either_layout():
    hwc = np.arange(2 * 2 * 4 * 3, dtype=np.uint8).reshape(2, 2, 4, 3)  # (B, H, W, 3)
    chw = hwc.transpose(0, 3, 1, 2).astype(np.float32)  # (B, 3, H, W)
    mask = torch.rand(2, generator=torch.Generator().manual_seed(1)).numpy() < 0.5
    assert mask.any() and not mask.all()  # the seed mirrors one image of the two
    out_hwc = ft.flip(hwc, 2, torch.Generator().manual_seed(1))
    out_chw = ft.flip(chw, 3, torch.Generator().manual_seed(1))
    for i in range(2):
        np.testing.assert_array_equal(out_hwc[i], hwc[i, :, ::-1] if mask[i] else hwc[i])
        np.testing.assert_array_equal(out_chw[i], chw[i, :, :, ::-1] if mask[i] else chw[i])


def test_torch_efficientnet_computes_what_the_onnx_graph_does(ravis_cache):
    from ravis.encoders import create_image_encoder

    encoder = create_image_encoder("efficientnet_lite0:64", cache_dir=ravis_cache)
    x = np.stack([encoder.preprocess(_dataset().load_image(i)) for i in range(3)])
    tuned = FineTunedEncoder(encoder, trainable_network(encoder))  # untrained: the same weights
    np.testing.assert_allclose(tuned.encode_pixels(x), encoder.encode_pixels(x), atol=1e-4)


def test_an_encoder_without_a_network_is_refused():
    class Onnx:
        name = "some-onnx"

    with pytest.raises(ValueError, match="some-onnx.*no torch network"):
        trainable_network(Onnx())


def test_reembed_needs_memory_parts_with_images():
    with pytest.raises(ConfigError, match="finetune_keys=frozen"):
        load_preset(TINY, ["train.finetune_encoder=true", "train.finetune_keys=reembed",
                           "memory.source=[train, emoji]"])
    load_preset(TINY, ["train.finetune_encoder=true", "memory.source=[train, emoji]"])  # frozen: any memory
    with pytest.raises(ConfigError, match="finetune_keys"):
        load_preset(TINY, ["train.finetune_keys=sometimes"])


@pytest.fixture(scope="module")
def tiny_prepared(ravis_cache):
    from ravis.experiment.prepare import prepare

    cfg = load_preset(TINY, ["encoder=efficientnet_lite0:64", "train.finetune_encoder=true"])
    return prepare(cfg, cfg.experiments[0], ravis_cache, progress=False)


def _perturbed(encoder) -> FineTunedEncoder:
    net = trainable_network(encoder)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p) * p.std().nan_to_num(0))
    return FineTunedEncoder(encoder, net)


@pytest.mark.parametrize("keys", ["reembed", "frozen"])
def test_keys_policy(tiny_prepared, ravis_cache, keys):
    import dataclasses

    from ravis.encoders import create_image_encoder
    from ravis.experiment.finetune import inputs_from

    prep = tiny_prepared
    exp = dataclasses.replace(prep.config, train=dataclasses.replace(prep.config.train, finetune_keys=keys))
    prep = dataclasses.replace(prep, config=exp)
    tuned = _perturbed(create_image_encoder(exp.encoder))
    new = inputs_from(tuned, prep, ravis_cache)
    images = prep.test.dataset
    x = np.stack([tuned.preprocess(images.load_image(i)) for i in range(8)])
    np.testing.assert_allclose(new.test.z[:8], tuned.encode_pixels(x), atol=1e-5)  # queries: tuned
    assert not np.allclose(new.test.z[:8], prep.test.z[:8], atol=1e-3)
    rows = np.arange(len(prep.memory))
    if keys == "frozen":  # keys and neighbours as the frozen encoder made them
        np.testing.assert_array_equal(new.memory.keys_at(rows), prep.memory.keys_at(rows))
        np.testing.assert_array_equal(new.test_I, prep.test_I)
    else:  # the memory's images embedded again, the neighbours retrieved again
        train = prep.train.dataset
        x = np.stack([tuned.preprocess(train.load_image(i)) for i in range(5)])
        own = new.memory.rows_of(list(train.ids[:5]))
        np.testing.assert_allclose(new.memory.keys_at(own).astype(np.float32), tuned.encode_pixels(x), atol=2e-3)
        assert not np.allclose(new.memory.keys_at(rows), prep.memory.keys_at(rows), atol=1e-3)
        assert (new.test_I != prep.test_I).any()
        first = new.memory.keys_at(new.test_I[:, 0]).astype(np.float32)
        np.testing.assert_allclose(new.test_D[:, 0], (new.test.z * first).sum(1), atol=2e-3)
