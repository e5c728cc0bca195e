"""Presets, recipes and overrides: a YAML preset (``configs/*.yaml``, found by name or
path) with ``${VAR}``s expanded, the recipe's settings under it, then dotted ``key=value``
overrides (``train.lr=1e-3`` for every experiment, ``experiments.0.retrieval.k=10`` for one),
resolved into a :class:`~ravis.config.sections.RunConfig`."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from pathlib import Path

import yaml

from ._typed import build
from .sections import RECIPES, ConfigError, RunConfig

log = logging.getLogger(__name__)


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(tree: dict, dotted: str, value) -> None:
    node, parts = tree, dotted.split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:depth]) or 'the config'} is a "
                                  f"list of {len(node)}, and {part!r} is not an index into it")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:depth])} is a value, not a section")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part] if isinstance(node, list) else node.setdefault(part, {})


#: Config sections that belong to each experiment; a preset may give them once for all.
STAGE_KEYS = ("data", "memory", "retrieval", "train", "mam", "classifier", "methods", "seeds")


def _parse_value(raw: str):
    """YAML scalar parsing, plus the floats YAML 1.1 leaves as strings ("3e-3")."""
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError) as e:  # ValueError: a date that does not exist
        raise ConfigError(f"cannot read the value {raw!r} ({e})") from e
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def resolve(tree: dict, overrides: list[str] = ()) -> RunConfig:
    """A RunConfig from a preset tree: ``defaults`` merged into every experiment, then the
    dotted overrides (``train.lr=1e-3`` applies to every experiment; ``experiments.0.x=...``
    to one)."""
    moved: set = set()
    tree = _moved_keys(copy.deepcopy(tree), moved)
    overrides = [_moved_override(o, moved) for o in overrides]
    _warn_moved(moved)
    shared = {k: tree.pop(k) for k in STAGE_KEYS if k in tree}
    recipe_over = [o for o in overrides if o.startswith("recipe=")]
    recipe = yaml.safe_load(recipe_over[-1].split("=", 1)[1]) if recipe_over else tree.get("recipe", "ravis")
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    shared = _deep_merge(RECIPES[recipe], shared)
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            parsed.append((key, _parse_value(raw)))
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from e
    # Overrides of the run and of its experiments (``experiments=[...]`` included) come before
    # the defaults are merged in, so a replaced experiment list gets them too; an
    # experiment's own settings still win over the defaults.
    for key, value in parsed:
        if key.split(".", 1)[0] not in STAGE_KEYS:
            _set_dotted(tree, key, value)
    tree["experiments"] = [_deep_merge(shared, e) for e in tree.get("experiments", [])]
    # Stage overrides (``train.lr=1e-3``) come last and apply to every experiment.
    for key, value in parsed:
        if key.split(".", 1)[0] in STAGE_KEYS:
            for exp in tree["experiments"]:
                _set_dotted(exp, key, value)
    return build(RunConfig, tree, "config")


#: Keys that moved to another section, old -> new: MAM's classifier and training options were
#: in ``mam`` before its section held the fusion module's alone. Presets, overrides and run
#: folders written before are read with them moved (and a warning saying how to rewrite them).
MOVED_KEYS = {"mam.label_evidence": "classifier.label_evidence",
              "mam.balance_votes": "classifier.balance_votes",
              "mam.hidden_layer": "classifier.hidden_layer",
              "mam.warm_start": "train.warm_start",
              "mam.vote_weight_grid": "train.vote_weight_grid",
              "mam.tune_posthoc": "train.tune_posthoc"}


def _moved_keys(tree: dict, moved: set) -> dict:
    """``tree`` (a preset or a saved config) with MOVED_KEYS moved, in its shared sections and
    in each experiment's (a new key given too wins); the old keys found are added to ``moved``."""
    for node in [tree] + [e for e in tree.get("experiments") or [] if isinstance(e, dict)]:
        for old, new in MOVED_KEYS.items():
            section, key = old.split(".")
            if isinstance(node.get(section), dict) and key in node[section]:
                value = node[section].pop(key)
                target_section, target_key = new.split(".")
                target = node.setdefault(target_section, {})
                if isinstance(target, dict):
                    target.setdefault(target_key, value)
                moved.add(old)
    return tree


def _moved_override(item: str, moved: set) -> str:
    """A dotted override with a moved key renamed (``mam.warm_start=false`` ->
    ``train.warm_start=false``; ``experiments.0.mam...`` too)."""
    key, sep, raw = item.partition("=")
    for old, new in MOVED_KEYS.items():
        if key == old or key.endswith("." + old):
            moved.add(old)
            return key[:len(key) - len(old)] + new + sep + raw
    return item


def _warn_moved(moved: set) -> None:
    if moved:
        log.warning("config keys read under their new names (a preset, override or run folder from "
                    "before they moved; rewrite them so): %s",
                    ", ".join(f"{old} -> {MOVED_KEYS[old]}" for old in MOVED_KEYS if old in moved))


def _expand_env(node):
    """${VAR} in strings becomes the environment's value (data paths stay out of presets);
    an unset variable is left as written and reported when the data is loaded."""
    if isinstance(node, dict):
        return {k: _expand_env(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v) for v in node]
    return os.path.expandvars(node) if isinstance(node, str) else node


def unset_variables(text: str) -> list[str]:
    """The ${VAR} names still in a string after expansion."""
    return re.findall(r"\$\{(\w+)\}", text)


def read_yaml(path: Path) -> dict:
    """The tree of a YAML config file ({} when empty), or a ConfigError naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, ValueError) as e:  # ValueError: not UTF-8, or a date that does not exist
        raise ConfigError(f"{path}: invalid YAML ({e})") from e


def resolve_file(path: Path, tree: dict, overrides: list[str] = ()) -> RunConfig:
    """:func:`resolve` of a file's tree, its errors naming the file."""
    try:
        return resolve(tree, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


#: The presets shipped in the package (``configs/*.yaml``), found by name.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def preset_names() -> list[str]:
    """The names of the packaged presets, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name: str) -> Path:
    """The file of the packaged preset ``name``."""
    return CONFIG_DIR / f"{name.removesuffix('.yaml')}.yaml"


def find_preset(spec: str) -> Path:
    """A preset given by path (``configs/tiny.yaml``) or by name (``tiny``, ``imagenet_lt``)."""
    path = Path(spec)
    if path.is_file():
        return path
    if "/" not in spec and config_path(spec).is_file():
        return config_path(spec)
    raise FileNotFoundError(f"no preset {spec!r}: not a file, and not one of the presets "
                            f"({', '.join(preset_names())})")


def load_preset(path: Path | str, overrides: list[str] = ()) -> RunConfig:
    """Reads a YAML preset (``configs/*.yaml``), expands ${VAR}s, applies dotted overrides."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such preset")
    return resolve_file(path, _expand_env(read_yaml(path)), overrides)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
