"""LACE against its formula, the schedule, and exact resume after an interruption."""

import numpy as np
import pytest
import torch

from ravis.config import TrainConfig
from ravis.fusion import RetrievalClassifier, create_fusion
from ravis.training import lace_loss, warmup_cosine
from ravis.training.data import MemoryTensors, QuerySet
from ravis.training.trainer import FitData, epochs_for, fit, parameter_groups


def test_lace_matches_formula():
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 0])
    counts = [100, 20, 5, 1]
    tau, eps = 0.7, 0.1
    prior = torch.tensor(counts, dtype=torch.float) / sum(counts)
    adj = logits + tau * prior.log()
    logp = adj.log_softmax(-1)
    target = torch.full((6, 4), eps / 4)
    target[torch.arange(6), y] += 1 - eps
    expected = -(target * logp).sum(-1).mean()
    torch.testing.assert_close(lace_loss(logits, y, counts, tau=tau, label_smoothing=eps), expected)


def test_lace_tau_zero_is_cross_entropy():
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    torch.testing.assert_close(lace_loss(logits, y, [5, 3, 1], tau=0.0),
                               torch.nn.functional.cross_entropy(logits, y))


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_min_steps_stretches_small_sets():
    cfg = TrainConfig(epochs=10, batch_size=512, min_steps=200)
    assert epochs_for(cfg, 2478) == (40, 5)
    assert epochs_for(TrainConfig(epochs=10, batch_size=512, min_steps=0), 100000) == (10, 196)


def test_weight_decay_and_lr_scale_groups():
    m = RetrievalClassifier(create_fusion("mam", 8, 4, num_layers=1, qk_lr_scale=0.1), 8, 3)
    groups = parameter_groups(m, 1e-2, 0.2)
    for g in groups:
        for p in g["params"]:
            assert g["weight_decay"] == (0.2 if p.ndim >= 2 else 0.0)
            assert g["lr"] == pytest.approx(1e-2 * getattr(p, "lr_scale", 1.0))
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def toy_problem(n=96, m=64, d=8, dv=6, c=3, k=5):
    g = torch.Generator().manual_seed(1)
    keys = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=-1)
    mem = MemoryTensors(keys, torch.randn(m, dv, generator=g))
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    nbr = torch.randint(0, m, (n, k), generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return QuerySet(z, nbr, y), mem


def _model():
    torch.manual_seed(3)
    return RetrievalClassifier(create_fusion("mam", 8, 6, num_layers=2, attn_dropout=0.2), 8, 3)


def test_resume_reaches_the_same_weights(tmp_path):
    train, mem = toy_problem()
    cfg = TrainConfig(lr=1e-2, epochs=4, batch_size=32, warmup_epochs=1, seed=5, min_steps=0,
                      checkpoint_every=0)
    counts = np.bincount(train.labels.numpy(), minlength=3)
    full = _model()
    fit(full, FitData(train, mem, counts), cfg, tau=1.0)

    ckpt = tmp_path / "run.ckpt.safetensors"
    interrupted = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, FitData(train, mem, counts), cfg, tau=1.0, checkpoint=ckpt,
            log=lambda s: _kill_after(s, epoch=2))
    assert ckpt.exists() and not list(tmp_path.glob("*.tmp"))
    resumed = _model()  # a fresh process: new model, state only from the checkpoint
    result = fit(resumed, FitData(train, mem, counts), cfg, tau=1.0, checkpoint=ckpt, resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_checkpoints_are_written_at_most_every_checkpoint_every_seconds(tmp_path):
    """Killed before the first checkpoint is due, a rerun starts over and still ends with
    the weights of an uninterrupted run."""
    train, mem = toy_problem()
    cfg = TrainConfig(lr=1e-2, epochs=4, batch_size=32, seed=5, min_steps=0, checkpoint_every=3600)
    counts = np.bincount(train.labels.numpy(), minlength=3)
    full = _model()
    fit(full, FitData(train, mem, counts), cfg, tau=1.0)
    ckpt = tmp_path / "run.ckpt.safetensors"
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), FitData(train, mem, counts), cfg, tau=1.0, checkpoint=ckpt,
            log=lambda s: _kill_after(s, epoch=3))
    assert not ckpt.exists()
    rerun = _model()
    result = fit(rerun, FitData(train, mem, counts), cfg, tau=1.0, checkpoint=ckpt, resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for (name, a), b in zip(full.state_dict().items(), rerun.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def _kill_after(line: str, epoch: int):
    if line.startswith(f"epoch={epoch} "):
        raise KeyboardInterrupt  # killed before epoch 2 is checkpointed: resume from epoch 1


def test_checkpoint_is_not_pickle(tmp_path):
    train, mem = toy_problem()
    ckpt = tmp_path / "c.safetensors"
    fit(_model(), FitData(train, mem, [1, 1, 1]),
        TrainConfig(epochs=1, batch_size=32, min_steps=0, checkpoint_every=0), tau=0.0, checkpoint=ckpt)
    assert ckpt.read_bytes()[:1] != b"\x80"  # pickle protocol marker
    from safetensors.torch import load_file
    assert any(k.startswith("opt/") for k in load_file(str(ckpt)))


def test_best_epoch_by_balanced_validation():
    train, mem = toy_problem()
    val = train.subset(np.arange(20))
    result = fit(_model(), FitData(train.subset(np.arange(20, 96)), mem, [1, 1, 1], val),
                 TrainConfig(lr=1e-2, epochs=5, batch_size=32, val_fraction=0.2, min_steps=0), tau=0.0)
    scores = [result.initial_score] + [h["val_score"] for h in result.history]  # epoch 0: untrained
    assert result.best_epoch == int(np.argmax(scores))
