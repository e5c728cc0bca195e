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

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from ..config import RunConfig, to_dict
from ..evaluation.report import format_table, plot_accuracy_vs_k, plot_shots
from ..io import atomic_path, save_json
from ..methods import method as get_method
from ..training.checkpoint import save_weights
from .methods import MethodResult, train_method, vote_result
from .prepare import Prepared, prepare
from ..run_folder import experiment_dir
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
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    results, timings = {"experiments": []}, {}
    for exp in cfg.experiments:
        t0 = time.perf_counter()
        echo(f"== {exp.name}")
        prep = prepare(cfg, exp, cache_dir, progress=progress)
        entry, times = run_methods(cfg, prep, out, cache_dir, resume=resume, echo=echo,
                                   copy_memory=copy_memory)
        results["experiments"].append(entry)
        timings[exp.name] = {**prep.timings, **times, "total": time.perf_counter() - t0}
        echo(format_table(entry))
        echo("")
        save_json(out / "results.json", results)  # after each experiment: partial results survive
    save_json(out / "timings.json", timings)
    echo(format_timings(timings))
    return results


def run_methods(cfg: RunConfig, prep: Prepared, out: Path, cache_dir: Path, *, resume: bool,
                echo: Callable[[str], None], copy_memory: bool = False) -> tuple[dict, dict]:
    """Trains and evaluates every method of one prepared experiment; writes its folder."""
    exp = prep.config
    folder = experiment_dir(out, exp.name)
    folder.mkdir(parents=True, exist_ok=True)
    methods: dict[str, MethodResult] = {}
    times = {}
    for method in exp.methods:
        t = time.perf_counter()
        if not get_method(method).trains:
            methods[method] = vote_result(prep)
        else:
            model, methods[method] = train_method(
                method, prep, cache_dir, cfg.text_encoder, checkpoint_dir=cache_dir / "checkpoints",
                resume=resume, log_fn=lambda s: log.info(s))
            save_weights(model, folder / f"{method}.safetensors")
        times[f"method:{method}"] = time.perf_counter() - t
        m = methods[method].metrics
        echo(f"   {method:<9} top1 {100 * m['top1']:5.1f}  ({times[f'method:{method}']:.1f} s"
             f"{', cached' if methods[method].details.get('cached') else ''})")
    entry = summarise(prep, cfg, methods)
    _write_experiment_outputs(folder, prep, entry, methods)
    t = time.perf_counter()
    save_for_serving(folder, out, prep, methods, cache_dir, copy_memory)
    times["run_folder"] = time.perf_counter() - t
    return entry, times


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
        "encoder": cfg.encoder,
        "text_encoder": cfg.text_encoder,
        "k": int(prep.test_I.shape[1]),
        "num_train": len(prep.train.z),
        "num_test": len(prep.test.z),
        "class_names": list(prep.train.dataset.class_names),
        "class_counts": [int(c) for c in prep.class_counts],
        "skipped_images": [list(s) for s in prep.skipped],
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
