"""Building the config's dataclasses from YAML trees: each value checked against its
field's type (an int is a float; a float is not an int), unknown keys refused by name."""

from __future__ import annotations

import dataclasses
import types
import typing

from .sections import ConfigError


def typed(value, hint, where: str):
    """``value`` as the field type ``hint`` wants it (an int is a float; a float is not an
    int), or a ConfigError naming the field, the type and the value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return typed(value, arg, where)
            except ConfigError:
                continue
        names = " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)
        raise ConfigError(f"{where} must be {names}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [typed(v, args[0], f"{where}.{i}") for i, v in enumerate(value)] if args else value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def build(cls, data, where: str):
    """Dataclass ``cls`` from a dict, recursively, refusing unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if dataclasses.is_dataclass(hint):
            value = build(hint, value, f"{where}.{key}")
        elif dataclasses.is_dataclass(item):  # a list of sections: the experiments
            if not isinstance(value, list):
                raise ConfigError(f"{where}.{key} must be a list, got {value!r}")
            value = [build(item, v, f"{where}.{key}.{i}"
                            + (f" ({v['name']})" if isinstance(v, dict) and "name" in v else ""))
                     for i, v in enumerate(value)]
        else:
            value = typed(value, hint, f"{where}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e
