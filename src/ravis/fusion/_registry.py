"""The fusion-module registry: a module registers itself by name with
:func:`register_fusion` (as timm's ``register_model``), and the method registry
(:mod:`ravis.methods`) names the one each method builds."""

from __future__ import annotations

from ..errors import InputError

#: Registered name -> fusion module class, built as ``cls(dim, value_dim, **options)``.
FUSIONS: dict[str, type] = {}


def register_fusion(name: str):
    """Class decorator: makes the fusion module available as ``name``. Its ``forward(z, keys,
    values) -> (f, attn)`` takes z (B, d), keys (B, k, d), values (B, k, d') and gives f (B, d)
    and attn (B, L, k); its ``reads`` says what of each neighbour it reads."""
    def add(cls: type) -> type:
        if FUSIONS.get(name, cls) is not cls:
            raise InputError(f"fusion {name!r} is already registered to {FUSIONS[name].__name__}")
        FUSIONS[name] = cls
        return cls

    return add
