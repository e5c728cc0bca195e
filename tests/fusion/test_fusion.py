"""Fusion modules against plain re-implementations of the paper's equations (Eq. 4-6)."""

import math

import pytest
import torch

from ravis.methods import METHODS
from ravis.fusion import MeanKNN, MemoryAttention, RetrievalClassifier, create_fusion

B, K, D, DV = 5, 7, 16, 12


def inputs():
    z = torch.nn.functional.normalize(torch.randn(B, D), dim=-1)
    keys = torch.nn.functional.normalize(torch.randn(B, K, D), dim=-1)
    values = torch.randn(B, K, DV)
    return z, keys, values


def reference_mam(module: MemoryAttention, z, keys, values):
    """Eq. 5-6 as written: psiK applied to every neighbour, every layer, fixed 1/sqrt(d)."""
    f, attns = z, []
    for i, layer in enumerate(module.layers):
        q = layer.q(f)  # (B, d)
        k = layer.k(keys)  # (B, k, d): psiK on every neighbour
        scores = torch.einsum("bd,bkd->bk", q, k)
        if module.log_scale is None:
            scores = scores / math.sqrt(D)
        else:
            scores = scores * module.log_scale[i].exp()
        if module.sim_weight is not None:
            scores = scores + module.sim_weight[i] * torch.einsum("bd,bkd->bk", z, keys)
        a = torch.softmax(scores, dim=-1)
        attns.append(a)
        f = z + layer.chi(torch.einsum("bk,bkv->bv", a, values))
    return f, torch.stack(attns, 1)


@pytest.mark.parametrize("options", [
    {},
    {"similarity_init": True, "learn_temperature": True, "qk_lr_scale": 0.01},
    {"similarity_bias": True},
])
@pytest.mark.parametrize("layers", [1, 3, 8])
def test_mam_matches_equations(options, layers):
    m = MemoryAttention(D, DV, layers, **options)
    if options.get("similarity_bias"):
        torch.nn.init.normal_(m.sim_weight)
    for layer in m.layers:  # random weights everywhere, chi included
        torch.nn.init.normal_(layer.chi.weight, std=0.3)
        torch.nn.init.normal_(layer.k.bias)
    z, keys, values = inputs()
    f, attn = m(z, keys, values)
    f_ref, attn_ref = reference_mam(m, z, keys, values)
    assert f.shape == (B, D) and attn.shape == (B, layers, K)
    torch.testing.assert_close(f, f_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(attn, attn_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, layers))


def test_mam_default_is_paper_form():
    m = MemoryAttention(D, DV)
    assert len(m.layers) == 8 and m.log_scale is None and m.sim_weight is None
    for layer in m.layers:
        assert isinstance(layer.q, torch.nn.Linear) and layer.q.weight.shape == (D, D)
        assert isinstance(layer.k, torch.nn.Linear) and layer.k.weight.shape == (D, D)
        assert isinstance(layer.chi, torch.nn.Linear) and layer.chi.weight.shape == (D, DV)
    # layers have their own parameters
    assert not torch.equal(m.layers[0].q.weight, m.layers[1].q.weight)


def test_similarity_init_starts_as_retrieval_similarity():
    m = MemoryAttention(D, DV, 2, similarity_init=True, learn_temperature=True, init_temperature=10.0)
    z, keys, values = inputs()
    f, attn = m(z, keys, values)
    expected = torch.softmax(10.0 * torch.einsum("bd,bkd->bk", z, keys), -1)
    torch.testing.assert_close(attn[:, 0], expected)
    torch.testing.assert_close(f, z)  # chi starts at zero


def test_mean_knn_matches_eq4():
    m = MeanKNN(D, DV)
    z, keys, values = inputs()
    f, attn = m(z, keys, values)
    torch.testing.assert_close(f, z + values.mean(1) @ m.chi.weight.T + m.chi.bias)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, 1))


@pytest.mark.parametrize("name", ["mean_knn", "mam"])
def test_neighbour_order_does_not_matter(name):
    m = create_fusion(name, D, DV)
    z, keys, values = inputs()
    perm = torch.randperm(K)
    f1, a1 = m(z, keys, values)
    f2, a2 = m(z, keys[:, perm], values[:, perm])
    torch.testing.assert_close(f1, f2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a1[..., perm], a2, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.trains])
def test_registry_forward_backward(name):
    fusion = create_fusion(name, D, DV)
    model = RetrievalClassifier(fusion, D, 4)
    z, keys, values = inputs()
    if name == "rac":
        values = values[:, :1]  # one embedding of the concatenated texts
    logits, attn = model(z, keys, values)
    assert logits.shape == (B, 4) and attn.shape[0] == B and attn.ndim == 3
    logits.logsumexp(-1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.trains])
def test_fusion_declares_what_its_registry_entry_reads(name):
    # the training data gathers only what a module declares; labels are the classifier's
    spec = METHODS[name]
    assert set(create_fusion(name, D, DV).reads) == set(spec.reads) - {"labels"}


def test_unknown_fusion():
    with pytest.raises(ValueError, match="unknown method"):
        create_fusion("nope", D, DV)


def test_knn_vote_matches_its_formula():
    import numpy as np

    from ravis.fusion import knn_vote

    D = np.array([[0.9, 0.8, 0.1], [0.5, 0.4, 0.3]], dtype=np.float32)
    labels = np.array([[1, 0, 0], [2, -1, 2]])
    scores = knn_vote(D, labels, num_classes=3, k=2, temperature=0.1)
    expected = np.zeros((2, 3))
    expected[0, 1] += np.exp(9.0)
    expected[0, 0] += np.exp(8.0)
    expected[1, 2] += np.exp(5.0) + np.exp(3.0)  # the unlabelled one is passed over, not counted
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds"):
        knn_vote(D, labels, 3, k=4)


@pytest.mark.parametrize("counts", [None, [1000, 100, 10, 3]], ids=["plain", "balanced"])
def test_label_evidence_matches_its_formula(counts):
    """The learned vote against a loop over the formula; with the memory's class counts each
    neighbour's weight is divided by its class's count before the votes are normalised."""
    torch.manual_seed(0)
    C, eps, top = 4, 0.01, 3
    fusion = create_fusion("mam", D, DV, num_layers=2, learn_temperature=True)
    model = RetrievalClassifier(fusion, D, C, label_evidence=True, label_k=top, label_eps=eps,
                                label_counts=counts)
    with torch.no_grad():
        model.label_weight.fill_(0.7)
        model.head.weight.normal_()
    z, keys, values = inputs()
    labels = torch.randint(-1, C, (B, K))
    logits, attn = model(z, keys, values, labels)
    f, a = fusion(z, keys, values)
    expected = model.head(f).detach().clone()
    s = float(model.label_log_scale.detach().exp())
    n = counts or [1] * C
    for b in range(B):
        voters = [j for j in range(K) if int(labels[b, j]) >= 0][:top]  # the 3 nearest labelled
        e = {j: math.exp(s * float(z[b] @ keys[b, j])) / n[int(labels[b, j])] for j in voters}
        for c in range(C):
            mass = sum(e[j] for j in voters if int(labels[b, j]) == c) / sum(e.values()) if e else 0.0
            expected[b, c] += 0.7 * math.log(eps + mass)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn, a)
    assert set(model.reads) == {"keys", "values", "labels"}


def test_untrained_label_evidence_is_the_knn_vote():
    """Zero head, sharpness 1 / T: the prediction is the kNN vote's at the same k."""
    import numpy as np

    from ravis.fusion import knn_vote

    torch.manual_seed(2)
    C, top = 5, 4
    model = RetrievalClassifier(create_fusion("mam", D, DV, num_layers=1), D, C, label_evidence=True,
                                label_k=top, label_temperature=0.07)
    z, keys, values = inputs()
    labels = torch.randint(0, C, (B, K))
    logits, _ = model(z, keys, values, labels)
    sim = torch.einsum("bd,bkd->bk", z, keys).numpy()
    vote = knn_vote(sim, labels.numpy(), C, top, 0.07)
    np.testing.assert_array_equal(logits.argmax(1).numpy(), vote.argmax(1))


def test_balanced_votes_with_equal_counts_are_the_plain_vote():
    """A balanced memory (every class the same count) gives exactly the plain vote; a class
    added after training (label C) weighs as a class of the trained classes' mean count."""
    torch.manual_seed(4)
    C = 3
    fusion = create_fusion("mam", D, DV, num_layers=1)
    plain = RetrievalClassifier(fusion, D, C, label_evidence=True)
    even = RetrievalClassifier(fusion, D, C, label_evidence=True, label_counts=[50, 50, 50])
    z, keys, values = inputs()
    labels = torch.randint(0, C + 1, (B, K))
    torch.testing.assert_close(even(z, keys, values, labels, C + 1)[0],
                               plain(z, keys, values, labels, C + 1)[0], rtol=0, atol=0)
    skewed = RetrievalClassifier(fusion, D, C, label_evidence=True, label_counts=[10, 20, 30])
    mean_counts = RetrievalClassifier(fusion, D, C + 1, label_evidence=True, label_counts=[10, 20, 30, 20])
    torch.testing.assert_close(skewed.label_votes(z, keys, labels, C + 1),
                               mean_counts.label_votes(z, keys, labels))
    with pytest.raises(ValueError, match="label_counts has shape"):
        RetrievalClassifier(fusion, D, C, label_evidence=True, label_counts=[1, 2])
    # with its own count, a new class is balanced as a trained class of that count would be
    own_count = RetrievalClassifier(fusion, D, C + 1, label_evidence=True, label_counts=[10, 20, 30, 4])
    torch.testing.assert_close(skewed.label_votes(z, keys, labels, C + 1, torch.tensor([4.0])),
                               own_count.label_votes(z, keys, labels))
    torch.testing.assert_close(skewed(z, keys, values, labels, C + 1, new_counts=torch.tensor([4.0]))[0][:, C],
                               skewed.head(z).mean(1) + torch.log(own_count.label_votes(z, keys, labels)[:, C] + 0.01))
    with pytest.raises(ValueError, match="new_counts has shape"):
        skewed.label_votes(z, keys, labels, C + 1, torch.tensor([4.0, 5.0]))


def test_unlabelled_neighbours_move_no_class():
    """Neighbours without a label in the class set (-1) shift every class alike."""
    torch.manual_seed(1)
    fusion = create_fusion("mam", D, DV, num_layers=1)
    model = RetrievalClassifier(fusion, D, 3, label_evidence=True)
    plain = RetrievalClassifier(fusion, D, 3)
    plain.head.load_state_dict(model.head.state_dict())
    z, keys, values = inputs()
    with_labels, _ = model(z, keys, values, torch.full((B, K), -1))
    without, _ = plain(z, keys, values)
    torch.testing.assert_close(with_labels - without, torch.full_like(without, math.log(0.01)))
    with_labels.sum().backward()  # no labelled neighbour at all: no NaN reaches the weights
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unlabelled_neighbours_are_passed_over():
    """Putting unlabelled entries between the labelled ones changes neither the vote nor
    the label evidence: both read the k nearest labelled neighbours."""
    import numpy as np

    from ravis.fusion import knn_vote

    torch.manual_seed(3)
    C, top = 4, 3
    model = RetrievalClassifier(create_fusion("mam", D, DV, num_layers=1), D, C, label_evidence=True,
                                label_k=top)
    z, keys, values = inputs()
    labels = torch.randint(0, C, (B, K))
    mixed = labels.clone()
    mixed[:, 1::2] = -1  # every other neighbour is now an unlabelled web entry
    keep = torch.arange(0, K, 2)
    plain, _ = model(z, keys[:, keep], values[:, keep], labels[:, keep])
    passed_over, _ = model(z, keys, values, mixed)  # the head is zero: the logits are the evidence
    torch.testing.assert_close(passed_over, plain)
    sim = torch.einsum("bd,bkd->bk", z, keys).numpy()
    np.testing.assert_allclose(knn_vote(sim, mixed.numpy(), C, top),
                               knn_vote(sim[:, ::2], labels[:, keep].numpy(), C, top))


def test_label_evidence_learns_and_needs_labels():
    fusion = create_fusion("mam", D, DV, num_layers=1)
    model = RetrievalClassifier(fusion, D, 3, label_evidence=True)
    z, keys, values = inputs()
    logits, _ = model(z, keys, values, torch.randint(0, 3, (B, K)))
    logits.logsumexp(-1).sum().backward()
    for p in (model.label_weight, model.label_log_scale):
        assert p.grad is not None and torch.isfinite(p.grad)
    with pytest.raises(ValueError, match="labels"):
        model(z, keys, values)


def test_a_fusion_module_registered_from_outside_builds_and_trains():
    """Anyone can add a fusion module (register_fusion) and a method that uses it
    (register_method): build_model builds it with the classifier, and a taken name is refused."""
    from torch import nn

    from ravis.config import ExperimentConfig
    from ravis.errors import InputError
    from ravis.fusion import FUSIONS, build_model, register_fusion
    from ravis.methods import METHODS, Method, register_method

    @register_fusion("test_values_gate")
    class ValuesGate(nn.Module):
        """f = z + W mean_j(v_j)."""

        reads = ("values",)

        def __init__(self, dim, value_dim, scale: float = 1.0):
            super().__init__()
            self.proj, self.scale = nn.Linear(value_dim, dim), scale

        def forward(self, z, keys, values):
            attn = values.new_full((values.shape[0], 1, values.shape[1]), 1.0 / values.shape[1])
            return z + self.scale * self.proj(values.mean(1)), attn

    try:
        register_method(Method("test_gate", "Values gate", "test_values_gate", ("values",)))
        model = build_model("test_gate", ExperimentConfig(name="x"), 8, 6, 3)
        assert isinstance(model.fusion, ValuesGate) and model.reads == ("values",)
        z, keys, values = torch.randn(4, 8), torch.randn(4, 5, 8), torch.randn(4, 5, 6)
        logits, attn = model(z, keys, values)
        assert logits.shape == (4, 3) and attn.shape == (4, 1, 5)
        logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        with pytest.raises(InputError, match="already registered"):
            register_fusion("memory_attention")(ValuesGate)
        with pytest.raises(InputError, match="already registered"):
            register_method(Method("mam", "another", "test_values_gate", ()))
    finally:
        FUSIONS.pop("test_values_gate", None)
        METHODS.pop("test_gate", None)

