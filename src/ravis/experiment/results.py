"""An experiment's results: each method's :class:`MethodResult`, the ``results.json`` entry
they make (:func:`summarise`; over several seeds :func:`aggregate_seeds`), where the time went
(:func:`format_timings`), and a finished run's metrics and plots made again from its saved
test logits (:func:`reevaluate`, ``ravis eval``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..evaluation.calibration import calibration_record, method_logits, pool
from ..evaluation.metrics import prediction_metrics
from ..evaluation.tables import memory_words
from ..evaluation.plots import plot_shots


@dataclass
class MethodResult:
    """One row of the results table."""

    metrics: dict  # top1, many, mid, few
    per_class: list  # (C,) accuracy, None for classes without test images
    details: dict  # method-specific: chosen tau, best epoch, vote k, accuracy versus k
    logits: np.ndarray | None = None  # (N_test, C)
    attention: np.ndarray | None = None  # (N_test, L, k)
    vote_weights: np.ndarray | None = None  # (N_test, k) each neighbour's share of the label evidence
    encoder: torch.nn.Module | None = None  # the fine-tuned encoder network (train.finetune_encoder)
    # (I, D) of the test queries where the method retrieved its own (a re-embedded memory)
    test_neighbors: tuple[np.ndarray, np.ndarray] | None = None


#: details shown in a method's row of results.json: the vote's k, and what validation kept
#: in place of a trained model (so nothing names the vote a trained attention module)
ROW_DETAILS = ("k", "kept")


def summarise(prep, text_encoder: str, methods: dict[str, MethodResult]) -> dict:
    """The results.json entry of one prepared experiment (``prep``)."""
    exp = prep.config
    memory_desc = memory_words(exp.memory, len(prep.memory))
    return {
        "name": exp.name,
        "dataset": exp.data.dataset + (" (long-tailed)" if exp.data.longtail else ""),
        "memory": memory_desc,
        "memory_size": len(prep.memory),
        "encoder": exp.encoder,
        "text_encoder": text_encoder,
        "k": int(prep.test_I.shape[1]),
        "num_train": len(prep.train.z),
        "num_test": len(prep.test.z),
        "class_names": list(prep.train.dataset.class_names),
        "class_counts": [int(c) for c in prep.class_counts],
        "skipped_images": [list(s) for s in prep.skipped],
        "contamination": prep.contamination,
        "methods": {name: {**r.metrics, **{k: r.details[k] for k in ROW_DETAILS if k in r.details}}
                    for name, r in methods.items()},
        "per_class": {name: r.per_class for name, r in methods.items()},
        "calibration": {name: r.details["calibration"] for name, r in methods.items()
                        if "calibration" in r.details},
        "details": {name: {k: v for k, v in r.details.items() if k not in ("history", "calibration")}
                    for name, r in methods.items()},
    }


def aggregate_seeds(entries: list[dict], seeds: list[int]) -> dict:
    """One results entry from an experiment's per-seed entries: each metric's mean over the
    seeds under "methods", its standard deviation (ddof 0) under "std", and every seed's own
    methods, per-class accuracies and details under "seeds". What validation kept is listed
    per seed ("kept": one per seed); calibration numbers are averaged, their bins pooled."""
    out = {k: v for k, v in entries[0].items() if k not in ("methods", "per_class", "details", "calibration")}
    out["methods"], out["std"] = {}, {}
    for name in entries[0]["methods"]:
        rows = [e["methods"][name] for e in entries]
        mean, std = {}, {}
        if "kept" in rows[0]:
            mean["kept"] = [r.get("kept") for r in rows]
        for metric in rows[0]:
            if metric in ROW_DETAILS:
                continue
            vals = [r[metric] for r in rows if r.get(metric) is not None]
            mean[metric] = float(np.mean(vals)) if vals else None
            std[metric] = float(np.std(vals)) if vals else None
        out["methods"][name], out["std"][name] = mean, std
    out["per_class"] = entries[0]["per_class"]  # the served (first) seed's
    out["details"] = entries[0]["details"]
    out["calibration"] = {name: pool([e["calibration"][name] for e in entries])
                          for name in entries[0].get("calibration", {})}
    out["seeds"] = [{"seed": s, "num_test": e["num_test"], "methods": e["methods"], "per_class": e["per_class"],
                     "details": e["details"], "calibration": e.get("calibration", {})}
                    for s, e in zip(seeds, entries)]
    return out


def format_timings(timings: dict) -> str:
    """Where the time went, per experiment and stage."""
    lines = ["time (s):"]
    total = 0.0
    for name, stages in timings.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if k not in ("total", "printed_at"))
        printed = f"; table at {stages['printed_at']:.0f} s" if "printed_at" in stages else ""
        lines.append(f"  {name:<14} {stages['total']:7.1f}  ({parts}{printed})")
        total += stages["total"]
    lines.append(f"  {'all':<14} {total:7.1f}")
    return "\n".join(lines)


def reevaluate(run_dir: Path | str) -> list[dict]:
    """Recomputes every metric of a finished run from its saved test logits, redraws its
    plots, and records them (results.json and the completion record); returns the entries.

    Raises:
        RunFolderError: the run did not finish, or a file it reads changed since.
        FolderBusyError: another command is writing the folder.
    """
    from ..run_folder import RunFolder

    run = RunFolder(run_dir)
    with run.locked(busy=f"{run.path}: another ravis command is writing this folder; wait for it"):
        _, record = run.open()  # refuses an unfinished run, saying how to finish it
        run.verify(record, [run.results])
        results = run.read_results()
        for entry in results["experiments"]:
            _reevaluate_experiment(run, record, entry)
        run.save_results(results)
        run.finish()  # results.json and the plots changed: record them
    return results["experiments"]


def _reevaluate_experiment(run, record: dict, entry: dict) -> None:
    folder = run.experiment(entry["name"])
    run.verify(record, [folder.predictions, folder.serving])
    folder.open_memory()  # refuses a memory gone or changed since
    # The run folder holds the first seed's predictions; the other seeds' results stay.
    served = entry["seeds"][0] if "seeds" in entry else entry
    with np.load(folder.predictions, allow_pickle=False) as f:
        labels = f["labels"]
        for name in served["methods"]:
            metrics, served["per_class"][name] = prediction_metrics(
                f[f"logits_{name}"].argmax(1), labels, entry["class_counts"])
            served["methods"][name].update(metrics)
            if name in served.get("calibration", {}):
                served["calibration"][name] = calibration_record(
                    method_logits(name, f[f"logits_{name}"]), labels, served["calibration"][name]["temperature"])
    if "seeds" in entry:
        entry.update(aggregate_seeds([{**entry, **s} for s in entry["seeds"]],
                                     [s["seed"] for s in entry["seeds"]]))
    plot_shots(entry, folder.shots_plot)


__all__ = ["MethodResult", "aggregate_seeds", "format_timings", "reevaluate", "summarise"]
