"""Typed configuration: one dataclass per stage, validated on construction
(:mod:`.sections`), resolved from YAML presets, recipes and dotted overrides (:mod:`.presets`).

Presets are YAML files under ``configs/``; any field can be overridden with a dotted
``key=value`` (``train.lr=1e-3``, ``experiments.0.retrieval.k=10``). The resolved config is
written next to every output.
"""

from .presets import (CONFIG_DIR, MOVED_KEYS, STAGE_KEYS, config_path, find_preset, load_preset,
                      preset_names, read_yaml, resolve, resolve_file, to_dict, unset_variables)
from .sections import (DEVICE_CHOICES, FINETUNE_KEYS, RECIPES, VALUE_KINDS, ClassifierConfig,
                       ConfigError, DataConfig, ExperimentConfig, MAMConfig, MEMORY_DTYPES,
                       MemoryBuildConfig, MemoryConfig,
                       RetrievalConfig, RunConfig, TrainConfig, is_device_spec)

__all__ = ["CONFIG_DIR", "ClassifierConfig", "ConfigError", "DEVICE_CHOICES", "DataConfig",
           "ExperimentConfig", "FINETUNE_KEYS", "MAMConfig", "MEMORY_DTYPES", "MOVED_KEYS",
           "MemoryBuildConfig", "MemoryConfig",
           "RECIPES", "RetrievalConfig", "RunConfig", "STAGE_KEYS", "TrainConfig", "VALUE_KINDS",
           "config_path", "find_preset", "is_device_spec", "load_preset", "preset_names",
           "read_yaml", "resolve", "resolve_file", "to_dict", "unset_variables"]
