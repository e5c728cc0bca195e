"""Sizes of RAM and disk budgets written as text ("16G", "512M", "2.5GB", "1e9")."""

from __future__ import annotations

import re

from .errors import InputError


def parse_bytes(text: str | int) -> int:
    """'16G', '512M', '2.5GB', '1e9' or an int -> bytes (powers of 1024 for K/M/G/T)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise InputError(f"cannot read a size from {text!r}; write e.g. 16G, 512M or 1e9")
    scale = 1024 ** " KMGT".index(m.group(2).upper() or " ")
    try:
        return int(float(m.group(1)) * scale)
    except ValueError:  # the pattern lets through "1..5G" or "eG"
        raise InputError(f"cannot read a size from {text!r}; write e.g. 16G, 512M or 1e9") from None
