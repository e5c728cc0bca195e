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


def test_link_or_copy_links_atomically_and_leaves_the_source_permissions(tmp_path):
    from ravis.io import link_or_copy

    src = tmp_path / "src.bin"
    src.write_bytes(b"shared")
    os.chmod(src, 0o444)  # a cache file another user made read-only
    dst = tmp_path / "run" / "dst.bin"
    dst.parent.mkdir()
    dst.write_bytes(b"old")
    assert link_or_copy(src, dst)
    assert os.path.samefile(src, dst) and dst.read_bytes() == b"shared"
    assert (src.stat().st_mode & 0o777) == 0o444
    assert not [p for p in dst.parent.iterdir() if p.name != "dst.bin"]  # no temporary left
