"""A whole run: every experiment's stages and methods, and their outputs in the run folder
(:mod:`ravis.run_folder` names its files)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..cache import code_version
from ..config import ExperimentConfig, RunConfig
from ..evaluation.plots import plot_accuracy_vs_k, plot_shots
from ..evaluation.tables import format_table
from ..fusion import build_model
from ..io import atomic_path, save_json
from ..methods import method as get_method
from ..run_folder import ExperimentFolder, RunFolder
from ..training.checkpoint import save_weights
from .evaluation_cache import cached_evaluation, evaluation_key
from .export import save_for_serving
from .prepare import Prepared, prepare
from .results import MethodResult, aggregate_seeds, format_timings, summarise
from .train_eval import train_method
from .vote import vote_result

log = logging.getLogger(__name__)


def run(cfg: RunConfig, out: Path, cache_dir: Path, *, resume: bool = True, progress: bool = True,
        copy_memory: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Runs every experiment of ``cfg``; writes and returns the results dict. The run folder
    refers to the memory folders it read; ``copy_memory`` copies them in instead."""
    folder = RunFolder(out)
    with folder.locked(busy=f"{folder.path}: another `ravis run`, `train` or `demo` is writing this "
                            "folder; wait for it or choose another --out"):
        code_version()  # hashed now: an edit made while this run works is not taken for its code
        folder.begin()  # incomplete until finish below
        # The saved config is the first seed's: the run folder serves that seed's models.
        cfg = dataclasses.replace(cfg, experiments=[with_seed(e, seeds_of(e)[0]) for e in cfg.experiments])
        folder.save_config(cfg)
        results, timings, start = {"experiments": []}, {}, time.perf_counter()
        for exp in cfg.experiments:
            t0 = time.perf_counter()
            entry, times = run_experiment(cfg, exp, folder, cache_dir, resume=resume, progress=progress,
                                          copy_memory=copy_memory, echo=echo)
            results["experiments"].append(entry)
            timings[exp.name] = {**times, "total": time.perf_counter() - t0}
            echo(format_table(entry))
            timings[exp.name]["printed_at"] = time.perf_counter() - start  # seconds into the run
            echo("")
            folder.save_results(results)  # after each experiment: partial results survive
        folder.save_timings(timings)
        folder.finish()  # last: the folder is complete
        echo(format_timings(timings))
        return results


def run_experiment(cfg: RunConfig, exp: ExperimentConfig, folder: RunFolder, cache_dir: Path, *,
                   resume: bool, progress: bool, copy_memory: bool,
                   echo: Callable[[str], None]) -> tuple[dict, dict]:
    """(results entry, timings summed over seeds) of one experiment, once per seed; the
    first seed's outputs go into its folder."""
    per_seed, times = [], {}
    for i, seed in enumerate(seeds_of(exp)):
        echo(f"== {exp.name}" + (f" (seed {seed})" if exp.seeds else ""))
        prep = prepare(cfg, with_seed(exp, seed), cache_dir, progress=progress)
        entry, seed_times = run_methods(cfg, prep, folder, cache_dir, resume=resume, echo=echo,
                                        copy_memory=copy_memory, write_folder=i == 0)
        per_seed.append(entry)
        for k, v in {**prep.timings, **seed_times}.items():
            times[k] = times.get(k, 0.0) + v
    return (aggregate_seeds(per_seed, exp.seeds) if exp.seeds else per_seed[0]), times


def seeds_of(exp: ExperimentConfig) -> list[int]:
    return list(exp.seeds) if exp.seeds else [exp.train.seed]


def with_seed(exp: ExperimentConfig, seed: int) -> ExperimentConfig:
    """``exp`` with its training seed (initialisation, batch order, validation split) and its
    split seed (the test split of a collection that comes without one) set to ``seed``."""
    return dataclasses.replace(exp, train=dataclasses.replace(exp.train, seed=seed),
                               data=dataclasses.replace(exp.data, split_seed=seed))


def run_methods(cfg: RunConfig, prep: Prepared, folder: RunFolder, cache_dir: Path, *, resume: bool,
                echo: Callable[[str], None], copy_memory: bool = False,
                write_folder: bool = True) -> tuple[dict, dict]:
    """Trains and evaluates every method of one prepared experiment; writes its folder
    (models, predictions, what serving needs) unless ``write_folder`` is False (the
    experiment's other seeds)."""
    exp_folder = folder.experiment(prep.config.name)
    exp_folder.path.mkdir(parents=True, exist_ok=True)
    methods: dict[str, MethodResult] = {}
    times = {}
    for method in prep.config.methods:
        t = time.perf_counter()
        model, methods[method] = evaluate_method(method, prep, cfg, cache_dir, resume)
        if model is not None and write_folder:
            save_weights(model, exp_folder.weights(method))
            if methods[method].encoder is not None:  # fine-tuned with it (train.finetune_encoder)
                save_weights(methods[method].encoder, exp_folder.encoder_weights(method))
        times[f"method:{method}"] = time.perf_counter() - t
        echo(f"   {method:<9} top1 {100 * methods[method].metrics['top1']:5.1f}  "
             f"({times[f'method:{method}']:.1f} s{', cached' if methods[method].details.get('cached') else ''})")
    entry = summarise(prep, cfg.text_encoder, methods)
    if write_folder:
        write_experiment_outputs(exp_folder, prep, entry, methods)
        t = time.perf_counter()
        save_for_serving(exp_folder, prep, methods, cache_dir, copy_memory)
        times["run_folder"] = time.perf_counter() - t
    return entry, times


def evaluate_method(method: str, prep: Prepared, cfg: RunConfig, cache_dir: Path,
                    resume: bool) -> tuple[torch.nn.Module | None, MethodResult]:
    """(the kept model, or None for the vote; its result): trained and evaluated, or read
    from the evaluation cache (:mod:`.evaluation_cache`) where this exact evaluation ran before."""
    if get_method(method).trains:
        compute = lambda: train_method(method, prep, cache_dir, cfg.text_encoder,
                                       checkpoint_dir=cache_dir / "checkpoints", resume=resume,
                                       log_fn=lambda s: log.info(s))
        rebuild = lambda details: build_model(method, prep.config, prep.memory.dim, prep.memory.value_dim,
                                              prep.num_classes, details.get("label_k", 0)).to(prep.device)
    else:
        compute, rebuild = (lambda: (None, vote_result(prep))), None
    if prep.config.train.finetune_encoder:  # its result carries a fine-tuned network: not cached
        return compute()
    key = evaluation_key(prep, method, cfg.text_encoder)
    return cached_evaluation(cache_dir / "evaluations" / f"{key}.safetensors", compute, rebuild)


def write_experiment_outputs(folder: ExperimentFolder, prep: Prepared, entry: dict,
                             methods: dict[str, MethodResult]) -> None:
    """The test predictions (logits, neighbours, attention), test ids and plots."""
    arrays = {f"logits_{name}": r.logits for name, r in methods.items() if r.logits is not None}
    arrays["labels"] = prep.test.dataset.labels
    arrays["neighbors"] = prep.test_I
    arrays["similarities"] = prep.test_D
    for name, r in methods.items():
        if get_method(name).attends and r.attention is not None:
            arrays[f"attention_{name}"] = r.attention.astype(np.float16)
        if r.vote_weights is not None:  # what the gallery's evidence reads (ravis.explain)
            arrays[f"vote_weights_{name}"] = r.vote_weights.astype(np.float16)
        if r.test_neighbors is not None:  # its attention is over neighbours of its own
            arrays[f"neighbors_{name}"], arrays[f"similarities_{name}"] = r.test_neighbors
    with atomic_path(folder.predictions) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    save_json(folder.test_ids, list(prep.test.dataset.ids))
    plot_shots(entry, folder.shots_plot)
    curves = {name: r.details["accuracy_vs_k"] for name, r in methods.items()
              if "accuracy_vs_k" in r.details}
    if curves:
        plot_accuracy_vs_k(entry, curves, folder.accuracy_vs_k_plot)


__all__ = ["evaluate_method", "run", "run_experiment", "run_methods", "seeds_of", "with_seed"]
