import hashlib

import torch

from ravis.encoders.fingerprint import file_digest, settings_digest, state_digest


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00\x01" * 1_000_000)  # over one read block
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_state_digest_follows_every_weight_and_only_the_unskipped():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    b.load_state_dict(a.state_dict())
    assert state_digest(a) == state_digest(b)
    with torch.no_grad():
        b[1].bias[0] += 1e-6
    assert state_digest(a) != state_digest(b)
    assert state_digest(a, skip={"1.bias"}) == state_digest(b, skip={"1.bias"})
    with torch.no_grad():  # same bytes, other dtype: a different model
        c = torch.nn.Linear(3, 4).double()
        d = torch.nn.Linear(3, 4)
    assert state_digest(c) != state_digest(d)


def test_settings_digest_ignores_key_order_but_not_values():
    assert settings_digest("m", {"a": 1, "b": 2}) == settings_digest("m", {"b": 2, "a": 1})
    assert settings_digest("m", {"a": 1}) != settings_digest("m", {"a": 2})
    assert settings_digest("m", [1, 2]) != settings_digest("m", [2, 1])
