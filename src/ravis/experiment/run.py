"""A whole run: every experiment's stages, methods, and the outputs in the run folder.

Run folder layout (``--out DIR``):

    config.yaml                 the resolved config
    results.json                {"experiments": [...]}: the Table-1 numbers and details
    timings.json                where the time went
    <experiment>/               one folder per experiment (name with "/" -> "-")
        <method>.safetensors    trained weights (no pickle)
        predictions.npz         test logits per method (allow_pickle=False)
        test_ids.json           ids of the test images, in the rows of predictions.npz
        shots.png, accuracy_vs_k.png
        memory/<part>/, test_thumbnails.parquet, serving.json
                                what serving needs without the cache (ravis.run_folder)
    report.html, report/*.png   written by ``ravis report`` (and by the demo)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from ..cache import code_version
from ..config import ExperimentConfig, RunConfig, to_dict
from ..evaluation.report import format_table, plot_accuracy_vs_k, plot_shots
from ..fusion import build_model
from ..io import atomic_path, exclusive_lock, save_json
from ..methods import method as get_method
from ..training.checkpoint import save_weights
from .evaluation_cache import cached_evaluation, evaluation_key
from .methods import MethodResult, train_method, vote_result
from .prepare import Prepared, prepare
from ..run_folder import begin_run, experiment_dir, finish_run
from .run_folder import save_for_serving

log = logging.getLogger(__name__)


def save_config(cfg: RunConfig, out: Path) -> None:
    with atomic_path(Path(out) / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def run(cfg: RunConfig, out: Path, cache_dir: Path, *, resume: bool = True, progress: bool = True,
        copy_memory: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Runs every experiment of ``cfg``; writes and returns the results dict. The run folder
    refers to the memory folders it read; ``copy_memory`` copies them in instead."""
    out = Path(out)
    with exclusive_lock(out / ".lock", busy=f"{out}: another `ravis run`, `train` or `demo` is "
                                           "writing this folder; wait for it or choose another --out"):
        return _run(cfg, out, cache_dir, resume=resume, progress=progress, copy_memory=copy_memory,
                    echo=echo)


def _run(cfg: RunConfig, out: Path, cache_dir: Path, *, resume: bool, progress: bool,
         copy_memory: bool, echo: Callable[[str], None]) -> dict:
    code_version()  # hashed now: an edit made while this run works is not taken for its code
    begin_run(out)  # incomplete until finish_run below
    # The saved config is the first seed's: the run folder serves that seed's models.
    cfg = dataclasses.replace(cfg, experiments=[with_seed(e, seeds_of(e)[0]) for e in cfg.experiments])
    save_config(cfg, out)
    results, timings = {"experiments": []}, {}
    for exp in cfg.experiments:
        t0 = time.perf_counter()
        per_seed, times = [], {}
        for i, seed in enumerate(seeds_of(exp)):
            echo(f"== {exp.name}" + (f" (seed {seed})" if exp.seeds else ""))
            prep = prepare(cfg, with_seed(exp, seed), cache_dir, progress=progress)
            entry, seed_times = run_methods(cfg, prep, out, cache_dir, resume=resume, echo=echo,
                                            copy_memory=copy_memory, write_folder=i == 0)
            per_seed.append(entry)
            for k, v in {**prep.timings, **seed_times}.items():  # summed over seeds
                times[k] = times.get(k, 0.0) + v
        entry = aggregate_seeds(per_seed, exp.seeds) if exp.seeds else per_seed[0]
        results["experiments"].append(entry)
        timings[exp.name] = {**times, "total": time.perf_counter() - t0}
        echo(format_table(entry))
        echo("")
        save_json(out / "results.json", results)  # after each experiment: partial results survive
    save_json(out / "timings.json", timings)
    finish_run(out)  # last: the folder is complete
    echo(format_timings(timings))
    return results


def seeds_of(exp: ExperimentConfig) -> list[int]:
    return list(exp.seeds) if exp.seeds else [exp.train.seed]


def with_seed(exp: ExperimentConfig, seed: int) -> ExperimentConfig:
    """``exp`` with its training seed (initialisation, batch order, validation split) and its
    split seed (the test split of a collection that comes without one) set to ``seed``."""
    return dataclasses.replace(exp, train=dataclasses.replace(exp.train, seed=seed),
                               data=dataclasses.replace(exp.data, split_seed=seed))


def aggregate_seeds(entries: list[dict], seeds: list[int]) -> dict:
    """One results entry from an experiment's per-seed entries: each metric's mean over the
    seeds under "methods", its standard deviation (ddof 0) under "std", and every seed's own
    methods, per-class accuracies and details under "seeds"."""
    out = {k: v for k, v in entries[0].items() if k not in ("methods", "per_class", "details")}
    out["methods"], out["std"] = {}, {}
    for name in entries[0]["methods"]:
        rows = [e["methods"][name] for e in entries]
        mean, std = {}, {}
        for metric in rows[0]:
            if metric == "k":
                continue
            vals = [r[metric] for r in rows if r.get(metric) is not None]
            mean[metric] = float(np.mean(vals)) if vals else None
            std[metric] = float(np.std(vals)) if vals else None
        out["methods"][name], out["std"][name] = mean, std
    out["per_class"] = entries[0]["per_class"]  # the served (first) seed's
    out["details"] = entries[0]["details"]
    out["seeds"] = [{"seed": s, "num_test": e["num_test"], "methods": e["methods"],
                     "per_class": e["per_class"], "details": e["details"]} for s, e in zip(seeds, entries)]
    return out


def run_methods(cfg: RunConfig, prep: Prepared, out: Path, cache_dir: Path, *, resume: bool,
                echo: Callable[[str], None], copy_memory: bool = False,
                write_folder: bool = True) -> tuple[dict, dict]:
    """Trains and evaluates every method of one prepared experiment; writes its folder
    (models, predictions, what serving needs) unless ``write_folder`` is False (the
    experiment's other seeds)."""
    exp = prep.config
    folder = experiment_dir(out, exp.name)
    folder.mkdir(parents=True, exist_ok=True)
    methods: dict[str, MethodResult] = {}
    times = {}
    for method in exp.methods:
        t = time.perf_counter()
        model, methods[method] = evaluate_method(method, prep, cfg, cache_dir, resume)
        if model is not None and write_folder:
            save_weights(model, folder / f"{method}.safetensors")
            if methods[method].encoder is not None:  # fine-tuned with it (train.finetune_encoder)
                save_weights(methods[method].encoder, folder / f"{method}.encoder.safetensors")
        times[f"method:{method}"] = time.perf_counter() - t
        m = methods[method].metrics
        echo(f"   {method:<9} top1 {100 * m['top1']:5.1f}  ({times[f'method:{method}']:.1f} s"
             f"{', cached' if methods[method].details.get('cached') else ''})")
    entry = summarise(prep, cfg, methods)
    if write_folder:
        _write_experiment_outputs(folder, prep, entry, methods)
        t = time.perf_counter()
        save_for_serving(folder, out, prep, methods, cache_dir, copy_memory)
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


def summarise(prep: Prepared, cfg: RunConfig, methods: dict[str, MethodResult]) -> dict:
    """The results.json entry of one experiment."""
    exp = prep.config
    mem = exp.memory
    memory_desc = f"{mem.source}, {mem.values} values"
    if mem.wrong_value_fraction:
        memory_desc += f", {mem.wrong_value_fraction:.0%} wrong values"
    return {
        "name": exp.name,
        "dataset": exp.data.dataset + (" (long-tailed)" if exp.data.longtail else ""),
        "memory": memory_desc,
        "memory_size": len(prep.memory),
        "encoder": exp.encoder,
        "text_encoder": cfg.text_encoder,
        "k": int(prep.test_I.shape[1]),
        "num_train": len(prep.train.z),
        "num_test": len(prep.test.z),
        "class_names": list(prep.train.dataset.class_names),
        "class_counts": [int(c) for c in prep.class_counts],
        "skipped_images": [list(s) for s in prep.skipped],
        "contamination": prep.contamination,
        "methods": {name: {**r.metrics, **({"k": r.details["k"]} if "k" in r.details else {})}
                    for name, r in methods.items()},
        "per_class": {name: r.per_class for name, r in methods.items()},
        "details": {name: {k: v for k, v in r.details.items() if k != "history"}
                    for name, r in methods.items()},
    }


def _write_experiment_outputs(folder: Path, prep: Prepared, entry: dict,
                              methods: dict[str, MethodResult]) -> None:
    arrays = {f"logits_{name}": r.logits for name, r in methods.items() if r.logits is not None}
    arrays["labels"] = prep.test.dataset.labels
    arrays["neighbors"] = prep.test_I
    arrays["similarities"] = prep.test_D
    for name, r in methods.items():
        if get_method(name).attends and r.attention is not None:
            arrays[f"attention_{name}"] = r.attention.astype(np.float16)
        if r.test_neighbors is not None:  # its attention is over neighbours of its own
            arrays[f"neighbors_{name}"], arrays[f"similarities_{name}"] = r.test_neighbors
    with atomic_path(folder / "predictions.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    save_json(folder / "test_ids.json", list(prep.test.dataset.ids))
    plot_shots(entry, folder / "shots.png")
    curves = {name: r.details["accuracy_vs_k"] for name, r in methods.items()
              if "accuracy_vs_k" in r.details}
    if curves:
        plot_accuracy_vs_k(entry, curves, folder / "accuracy_vs_k.png")


def format_timings(timings: dict) -> str:
    """Where the time went, per experiment and stage."""
    lines = ["time (s):"]
    total = 0.0
    for name, stages in timings.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if k != "total")
        lines.append(f"  {name:<14} {stages['total']:7.1f}  ({parts})")
        total += stages["total"]
    lines.append(f"  {'all':<14} {total:7.1f}")
    return "\n".join(lines)


__all__ = ["experiment_dir", "format_timings", "run", "run_methods", "save_config", "summarise"]
