"""What several verbs' parsers share: the help formatter, the option groups, the run config
a verb's options make, and the cache folder they name. Each default comes from the config
dataclass that owns it (:mod:`ravis.config`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import DataConfig, RunConfig, config_path, find_preset, load_preset, resolve


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, unless the help already says it or there
    is none worth showing (unset, off, empty)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings
                or action.default in (None, False, [], argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def add_cache(p: argparse.ArgumentParser, what: str = "models, embeddings, neighbours") -> None:
    p.add_argument("--cache", type=Path, default=None,
                   help=f"cache folder for {what} (default $RAVIS_CACHE or ~/.cache/ravis)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="auto (the first GPU where there is one, else the CPU), cpu, cuda or cuda:N "
                        f"(default: the config's run.device, {RunConfig.device})")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars, and no faiss or ScaNN chatter")


def add_common(p: argparse.ArgumentParser, trains: bool = True) -> None:
    """The options of every verb that runs the pipeline (or a stage of it)."""
    add_cache(p)
    if trains:
        p.add_argument("--recipe", choices=["ravis", "paper"], default=None,
                       help="training recipe: the ravis defaults, or the paper's settings as published "
                            "(default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=1e-3 (repeatable)")
    add_device(p)
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error, not a skip")
    add_quiet(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log more (every training epoch), and print the full traceback of an error")


def add_config_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="PRESET",
                   help="a preset, by name (tiny, demo, imagenet_lt; see `ravis presets`) or by YAML path")
    p.add_argument("--dataset", help="instead of a preset: fashion-mnist, tuxpaint, imagefolder:PATH, "
                                     "lt-split:IMAGE_ROOT:TRAIN_FILE:TEST_FILE")
    p.add_argument("--class-depth", type=int, default=DataConfig.class_depth,
                   help="folder level that names the class")
    p.add_argument("--encoder", default=RunConfig.encoder, help="image encoder spec")
    p.add_argument("--text-encoder", default=RunConfig.text_encoder, help="text encoder spec")


def add_seeds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run each experiment once per seed (training seed and split seed) and report "
                        "mean and standard deviation, e.g. --seeds 0,1,2 (default: the config's)")


def add_copy_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--copy-memory", action="store_true",
                   help="copy the memory folders the run reads into the run folder (self-contained; "
                        "default: refer to them by path and manifest digest)")


def run_config(args, preset: Path | None = None) -> RunConfig:
    """The run config of a pipeline verb: ``preset`` (the demo's), else ``-c PRESET``, else
    one experiment on ``--dataset``, with ``--recipe``, ``--device``, ``--seeds``,
    ``--strict`` and ``--set`` applied."""
    overrides = list(args.overrides)
    if getattr(args, "recipe", None):
        overrides.append(f"recipe={args.recipe}")
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    if getattr(args, "seeds", None):
        overrides.append(f"seeds={_seeds(args.seeds)}")
    if getattr(args, "strict", False):
        overrides.append("strict=true")
    if preset is not None:
        return load_preset(preset, overrides)
    if getattr(args, "config", None):
        return load_preset(find_preset(args.config), overrides)
    if not getattr(args, "dataset", None):
        raise SystemExit("ravis: give a preset (-c FILE) or a dataset (--dataset SPEC)")
    tree = {"encoder": args.encoder, "text_encoder": args.text_encoder,
            "experiments": [{"name": Path(args.dataset.split(":", 1)[-1]).name or args.dataset,
                             "data": {"dataset": args.dataset, "class_depth": args.class_depth},
                             "memory": {"source": "train", "values": "caption"}}]}
    return resolve(tree, overrides)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise SystemExit(f"ravis: --seeds takes integers separated by commas, got {text!r}") from None


def demo_preset() -> Path:
    return config_path("demo")


def cache_dir(args) -> Path:
    from ..io import default_cache_dir

    return Path(args.cache or default_cache_dir())


def export_cache(args) -> None:
    """--cache reaches the encoders (and Ray workers) through RAVIS_CACHE."""
    if getattr(args, "cache", None):
        os.environ["RAVIS_CACHE"] = str(args.cache)
