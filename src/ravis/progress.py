"""The one progress bar of ravis: tqdm on stderr, so stdout keeps only results."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, unit: str, *, initial: int = 0, enabled: bool = True):
    """A tqdm bar over ``total`` items, starting at ``initial`` (a resumed job shows what
    was already done); a no-op where ``enabled`` is false."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True, smoothing=0.1)
