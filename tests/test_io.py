"""Atomic writes leave files with the permissions the umask gives, as open() would."""

import os
import stat

import numpy as np
import pytest

from ravis.io import atomic_path, current_umask, save_json, save_npy


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        save_json(tmp_path / "a.json", {"x": 1})
        save_npy(tmp_path / "b.npy", np.zeros(3))
        with atomic_path(tmp_path / "c.bin") as tmp:
            tmp.write_bytes(b"c")
        plain = tmp_path / "plain"
        plain.write_text("as open() makes it")
    finally:
        os.umask(old)
    for name in ("a.json", "b.npy", "c.bin", "plain"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert not list(tmp_path.glob(".*.tmp"))
