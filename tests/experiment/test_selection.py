"""Every tuned value (training tau, post-hoc tau, epoch, the vote's k) is chosen on the
validation split, and the choice keeps every method above a majority-class guess even on
an extreme imbalance (classes of 2 next to classes of 2,000)."""

import copy

import numpy as np
import pytest

from ravis.config import DataConfig, ExperimentConfig, RetrievalConfig, TrainConfig
from ravis.data.dataset import ImageDataset
from ravis.evaluation.metrics import paired_gain
from ravis.experiment import train_method, vote_result
from ravis.experiment.selection import choose_on_validation, selection_metric
from ravis.experiment.prepare import Prepared, SplitData
from ravis.memory import ArrayMemory

DIM, DV, K = 24, 8, 10


def dataset(name, labels, classes):
    ids = [f"{name}/{i}" for i in range(len(labels))]
    return ImageDataset(name, ids, labels, classes, [None] * len(labels), f"fp-{name}-{len(labels)}",
                        loader=lambda i: None)


def synthetic(train_counts, test_counts, dataset_spec="imagefolder:synthetic", seed=0, noise=0.9):
    """A prepared experiment on Gaussian class clusters whose memory is the training split
    (neighbours found exactly, each training query's own entry excluded)."""
    rng = np.random.default_rng(seed)
    C = len(train_counts)
    centres = rng.standard_normal((C, DIM))

    def draw(counts):
        labels = np.repeat(np.arange(C), counts)
        z = centres[labels] + noise * rng.standard_normal((len(labels), DIM)) * np.sqrt(DIM) / 4
        return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32), labels

    classes = [f"c{i}" for i in range(C)]
    z_tr, y_tr = draw(train_counts)
    z_te, y_te = draw(test_counts)
    prompts = rng.standard_normal((C, DV)).astype(np.float32)
    memory = ArrayMemory(keys=z_tr, values=prompts[y_tr] / np.linalg.norm(prompts[y_tr], axis=1, keepdims=True),
                         labels=y_tr, texts=[classes[y] for y in y_tr], ids=[f"train/{i}" for i in range(len(y_tr))],
                         sources=["train"] * len(y_tr), key_encoder="synthetic", value_encoder="synthetic",
                         class_names=classes)

    def search(q, exclude_self):
        s = q @ z_tr.T
        if exclude_self:
            np.fill_diagonal(s, -np.inf)
        I = np.argsort(-s, axis=1, kind="stable")[:, :K]
        return np.take_along_axis(s, I, 1).astype(np.float32), I.astype(np.int64)

    train_D, train_I = search(z_tr, True)
    test_D, test_I = search(z_te, False)
    exp = ExperimentConfig(name="synthetic", data=DataConfig(dataset=dataset_spec),
                           retrieval=RetrievalConfig(k=K, vote_ks=[1, 5, 10], k_curve=[1, 5, 10]),
                           train=TrainConfig(epochs=4, min_steps=60, batch_size=256))
    return Prepared(exp, SplitData(dataset("train", y_tr, classes), z_tr),
                    SplitData(dataset("test", y_te, classes), z_te), memory,
                    train_D, train_I, test_D, test_I, np.bincount(y_tr, minlength=C))


def choices(result):
    d = result.details
    return {key: d.get(key) for key in ("tau", "posthoc_tau", "best_epoch", "k", "select_on")}


@pytest.mark.parametrize("name", ["linear", "mam"])
def test_test_labels_do_not_change_any_choice(name, tmp_path):
    prep = synthetic([300, 120, 40, 12, 6, 3], [60, 60, 60, 60, 60, 60], dataset_spec="fashion-mnist")
    blind = copy.deepcopy(prep)
    blind.test.dataset.labels = np.zeros_like(prep.test.dataset.labels)  # the labels are gone
    a = train_method(name, prep, tmp_path / "a", "minilm", checkpoint_dir=tmp_path / "a-ckpt")[1]
    b = train_method(name, blind, tmp_path / "b", "minilm", checkpoint_dir=tmp_path / "b-ckpt")[1]
    assert choices(a) == choices(b)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.details["select_on"] == "balanced"  # balanced test set, long-tailed training set


def test_vote_k_is_chosen_without_the_test_labels():
    prep = synthetic([300, 120, 40, 12, 6, 3], [60] * 6, dataset_spec="fashion-mnist")
    blind = copy.deepcopy(prep)
    blind.test.dataset.labels = np.zeros_like(prep.test.dataset.labels)
    assert vote_result(prep).details["k"] == vote_result(blind).details["k"]
    assert "leave-one-out" in vote_result(prep).details["note"]


def test_extreme_imbalance_stays_above_the_majority_share(tmp_path):
    """Classes of 2,000 next to classes of 2, test split drawn like training (an ImageFolder
    with a stratified split): every trained method beats always guessing the largest class."""
    counts = [2000, 400, 60, 8, 2, 2]
    prep = synthetic(counts, [c // 4 + 1 for c in counts], noise=1.1)
    assert selection_metric(prep.config) == "top1"
    majority = np.bincount(prep.test.dataset.labels).max() / len(prep.test.dataset.labels)
    for name in ("linear", "mlp", "mean_knn", "mam"):
        result = train_method(name, prep, tmp_path, "minilm", checkpoint_dir=tmp_path / "ckpt")[1]
        assert result.metrics["top1"] > majority, (name, result.metrics, choices(result))
    assert vote_result(prep).metrics["top1"] > majority


def test_choose_on_validation_takes_the_median_of_ties():
    scores = {0.0: 0.5, 0.25: 0.7, 0.5: 0.7, 0.75: 0.7, 1.0: 0.6}
    assert choose_on_validation(list(scores), scores.get) == 0.5
    assert choose_on_validation([0.0, 1.0], {0.0: 0.1, 1.0: 0.2}.get) == 1.0


def test_paired_gain_counts_only_disagreements():
    labels = np.array([0, 0, 0, 0, 1, 1])
    ref = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 0, 0, 1, 1, 0])  # one more right than ref, nothing else changed
    gain, se = paired_gain(pred, ref, labels, "top1")
    assert gain == pytest.approx(1 / 6) and se == pytest.approx(1 / 6)
    gain, se = paired_gain(pred, ref, labels, "balanced")  # class 0 has 4 images of 2 classes
    assert gain == pytest.approx(1 / 8) and se == pytest.approx(1 / 8)
    assert paired_gain(ref, ref, labels, "top1") == (0.0, 0.0)


@pytest.mark.parametrize("select_on", ["top1", "balanced"])
@pytest.mark.parametrize("margin, kept", [(0.0, "trained"), (1e6, "untrained")])
def test_the_vote_is_kept_unless_training_beats_it_by_the_margin(margin, kept, select_on, tmp_path):
    """With label evidence the untrained model is the kNN vote; an impossible margin keeps
    it (its predictions are the vote's: plain where the score is top-1, balanced by the
    memory's long-tailed class counts where it is balanced accuracy), no margin keeps what
    scores best on validation."""
    prep = synthetic([300, 120, 40, 12, 6, 3], [60] * 6, dataset_spec="fashion-mnist", noise=1.2)
    prep.config.train.select_margin = margin
    prep.config.train.select_on = select_on
    result = train_method("mam", prep, tmp_path, "minilm", checkpoint_dir=tmp_path / "ckpt")[1]
    simplest = "balanced" if select_on == "balanced" else "untrained"
    assert result.details["vs_vote_on_validation"]["vote"] == simplest
    assert result.details["kept"] in ("trained", "untrained", "balanced", "warm start")
    if kept == "untrained":
        assert result.details["kept"] == simplest and result.details["posthoc_tau"] == 0.0
        vote = vote_result(prep)
        assert result.details["label_k"] == vote.details["k"]
        counts = prep.memory_label_counts if simplest == "balanced" else np.ones(6)
        assert (counts != counts[0]).any() or simplest == "untrained"
        np.testing.assert_array_equal(result.logits.argmax(1), (vote.logits / counts).argmax(1))
    else:  # the best on validation, which scores at least the vote
        gain = result.details["vs_vote_on_validation"]["gain"]
        assert gain >= 0
        plain_vote = result.details["kept"] == simplest and result.details["posthoc_tau"] == 0.0
        assert plain_vote == (gain == 0)


def test_model_cache_is_keyed_on_the_embeddings(tmp_path):
    """The same images embedded by another encoder (or at another image size) keep their
    dataset fingerprints; a model cached for the first embeddings must not be loaded."""
    prep = synthetic([60, 30, 10], [20, 20, 20])
    other = copy.deepcopy(prep)
    other.train.z = other.train.z[:, ::-1].copy()  # another encoder's view of the same images
    first = train_method("linear", prep, tmp_path, "minilm", checkpoint_dir=tmp_path / "ckpt")[1]
    again = train_method("linear", prep, tmp_path, "minilm", checkpoint_dir=tmp_path / "ckpt")[1]
    moved = train_method("linear", other, tmp_path, "minilm", checkpoint_dir=tmp_path / "ckpt")[1]
    assert not first.details["cached"] and again.details["cached"]
    assert not moved.details["cached"]


def test_a_damaged_cached_model_is_trained_again(tmp_path, caplog):
    """Cached weights are loaded only when their bytes match the sha256 sealed with them: a
    flipped byte in a weight used to be loaded as it was."""
    prep = synthetic([60, 30, 10], [20, 20, 20])
    first = train_method("linear", prep, tmp_path, "minilm", checkpoint_dir=tmp_path / "ckpt")[1]
    (weights,) = (tmp_path / "models").glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x10  # inside the last tensor's bytes: still a loadable file
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again = train_method("linear", prep, tmp_path, "minilm", checkpoint_dir=tmp_path / "ckpt")[1]
    assert not again.details["cached"] and str(weights) in caplog.text
    np.testing.assert_array_equal(again.logits, first.logits)  # trained to the same weights
    third = train_method("linear", prep, tmp_path, "minilm", checkpoint_dir=tmp_path / "ckpt")[1]
    assert third.details["cached"]


def test_warm_start_trains_the_classifier_alone_then_chooses_the_vote_weight_on_validation(tmp_path):
    """The first phase moves neither the fusion module nor the vote's sharpness (the vote's
    weight is 0 while the classifier trains); the vote's weight it ends with is the grid
    value whose product scores best on validation, found here by brute force."""
    import dataclasses

    import torch
    from ravis.evaluation.metrics import selection_score
    from ravis.experiment.train_eval import MethodRun
    from ravis.training.trainer import predict

    prep = synthetic([300, 120, 40, 12, 6, 3], [60] * 6, dataset_spec="fashion-mnist", noise=1.2)
    weights, posthoc = [0.125, 0.5, 2.0], [0.0, 1.0]  # exact in float32, as the weight is stored
    prep.config = dataclasses.replace(prep.config, train=dataclasses.replace(
        prep.config.train, val_fraction=0.2, vote_weight_grid=weights))
    run = MethodRun("mam", prep, tmp_path, "minilm", tmp_path / "ckpt", resume=False)
    val, memory, prior = run.val, run.memory, run.prior
    model = run.build(prep.memory_label_counts)
    fusion_before = {k: v.clone() for k, v in model.fusion.state_dict().items()}
    scale_before = model.label_log_scale.detach().clone()
    warm, chosen = run.warm_start(model, "key", 1.0, posthoc)
    for k, v in warm.fusion.state_dict().items():
        torch.testing.assert_close(v, fusion_before[k])
    assert warm.label_log_scale == scale_before
    assert warm.head.weight.abs().sum() > 0  # the classifier did train
    assert all(p.requires_grad for p in model.parameters())  # the second phase trains everything
    labels, best = val.labels.numpy(), None
    for w in weights:
        probe = copy.deepcopy(warm)
        with torch.no_grad():
            probe.label_weight.fill_(w)
        logits = predict(probe, val, memory)[0]
        for p in posthoc:
            score = selection_score((logits - p * prior).argmax(1), labels, "balanced")
            if best is None or score > best[0] + 1e-12:
                best = (score, w)
    assert chosen["vote_weight"] == best[1] == float(warm.label_weight.detach())
    assert chosen["val_score"] == pytest.approx(best[0])


def test_warm_start_only_where_the_memory_holds_no_more_labels_than_the_training_set(tmp_path):
    """Where the memory is the training split and the score is balanced accuracy the warm
    start runs; where the memory holds more labelled entries than there are training images
    (fmnist-lt/B's 60k against 2,478), or the score is top-1, it is skipped, and the details
    say why."""
    prep = synthetic([300, 120, 40, 12, 6, 3], [60] * 6, dataset_spec="fashion-mnist", noise=1.2)
    own = train_method("mam", prep, tmp_path, "minilm", checkpoint_dir=tmp_path / "ckpt")[1]
    assert set(own.details["warm_start"]) == {"vote_weight", "val_score", "best_epoch"}

    bigger = synthetic([300, 120, 40, 12, 6, 3], [60] * 6, dataset_spec="fashion-mnist", noise=1.2)
    bigger.__dict__["memory_label_counts"] = np.full(6, 1000)  # as a memory of 6,000 labelled rows reads
    other = train_method("mam", bigger, tmp_path / "b", "minilm", checkpoint_dir=tmp_path / "b" / "ckpt")[1]
    assert other.details["warm_start"] == {
        "skipped": "the memory holds 6000 labelled entries, more than the 481 training images"}
    assert other.details["kept"] != "warm start"

    top1 = synthetic([300, 120, 40, 12, 6, 3], [60] * 6, noise=1.2)  # a stratified split: top-1
    third = train_method("mam", top1, tmp_path / "c", "minilm", checkpoint_dir=tmp_path / "c" / "ckpt")[1]
    assert third.details["select_on"] == "top1"
    assert third.details["warm_start"] == {"skipped": "the score is top-1"}


def test_a_vote_weight_of_zero_is_refused():
    """At weight 0 MAM would not read its memory's labels: an edit could not teach it a class."""
    from ravis.errors import InputError

    with pytest.raises(InputError, match="vote_weight_grid must be a non-empty list of weights > 0"):
        TrainConfig(vote_weight_grid=[0.0, 0.5])
    assert TrainConfig().vote_weight_grid == [0.1, 0.25, 0.5, 1.0, 2.0]
