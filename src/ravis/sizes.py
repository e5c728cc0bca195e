"""Sizes of RAM and disk budgets written as text ("16G", "512M", "2.5GB", "1e9")."""

from __future__ import annotations

import re

from .errors import InputError


def parse_bytes(text: str | int) -> int:
    """'16G', '512M', '2.5GB', '1e9' or an int -> bytes (powers of 1024 for K/M/G/T)."""
    if isinstance(text, int):
        return text
    # the number part is one float() reads: "16", "2.5", ".5", "1e9", "+1E+9", not "1..5" or "e"
    m = re.fullmatch(r"\s*(\+?(?:\d+\.?\d*|\.\d+)(?:e\+?\d+)?)\s*([KMGT]?)i?B?\s*", str(text),
                     re.IGNORECASE)
    if not m:
        raise InputError(f"cannot read a size from {text!r}; write e.g. 16G, 512M or 1e9")
    scale = 1024 ** " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * scale)
