"""New classes without retraining: a model trained with 20% of the classes held out learns
them from memory edits alone.

For fmnist-lt/A and B (2 of Fashion-MNIST's 10 classes) and Tux Paint (20% of its categories,
seed 0), from the demo preset:

1. ``ravis run`` the experiment with ``data.hold_out_fraction=0.2``: MAM and the kNN vote
   are trained and tuned on the other classes only (their training images, their memory);
2. the held-out classes' entries of the full experiment's memory (their training images, the
   values the memory gives them) are added to that run's memory by one edit
   (:meth:`ravis.editor.MemoryEditor.add_embedded`), with their class names as new labels;
3. every test image of the full experiment is predicted by the edited model (no retraining),
   by the kNN vote over the same edited memory (at the k the model's label evidence reads),
   and by MAM retrained with every class (the same experiment without held-out classes).

Printed and written: top-1 on the new classes' test images, on the old ones' and on all,
for each; and the old classes' top-1 before the edit (what adding the new classes cost them).

    python benchmarks/study_new_classes.py --work /tmp/new-classes \
        --out benchmarks/results/new-classes.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CASES = ("fmnist-lt/A", "fmnist-lt/B", "tuxpaint")


def configs(name: str, fraction: float, overrides: list[str] = ()):
    """(held-out run config, full run config) of one demo experiment, MAM and the vote, seed 0;
    ``overrides`` as ``ravis run --set`` takes them."""
    from ravis.config import load_preset

    cfg = load_preset(ROOT / "configs" / "demo.yaml", overrides)
    exp = next(e for e in cfg.experiments if e.name == name)
    exp = dataclasses.replace(exp, seeds=[0], methods=["mam", "knn_vote"])
    held = dataclasses.replace(exp, data=dataclasses.replace(exp.data, hold_out_fraction=fraction))
    return (dataclasses.replace(cfg, experiments=[held]), dataclasses.replace(cfg, experiments=[exp]))


def accuracy(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return round(100 * float((pred[mask] == truth[mask]).mean()), 2)


def predictions(predictor, z: np.ndarray, batch: int = 512) -> np.ndarray:
    names = []
    for start in range(0, len(z), batch):
        names += [o["prediction"] for o in predictor.predict_embeddings(z[start:start + batch],
                                                                        top_neighbors=1)]
    return np.array(names, dtype=object)


def vote_predictions(predictor, z: np.ndarray, k: int) -> np.ndarray:
    from ravis.fusion.knn_vote import knn_vote
    from ravis.memory.base import neighbor_labels

    names = predictor.all_class_names
    D, I = predictor.index.search(z, predictor.k)
    labels = predictor._model_labels(neighbor_labels(predictor.memory, I), names)
    scores = knn_vote(D, labels, len(names), k, predictor.experiment.retrieval.vote_temperature)
    return np.array(names, dtype=object)[scores.argmax(1)]


def study(name: str, work: Path, cache: Path, fraction: float, overrides: list[str] = ()) -> dict:
    from ravis.data.dataset import held_out_classes
    from ravis.editor import MemoryEditor
    from ravis.experiment.prepare import prepare
    from ravis.experiment.run import run
    from ravis.predictor import Predictor

    held_cfg, full_cfg = configs(name, fraction, overrides)
    slug = name.replace("/", "-")
    t0 = time.perf_counter()
    run(held_cfg, work / f"{slug}-held-out", cache, progress=False, echo=lambda s: None)
    run(full_cfg, work / f"{slug}-all", cache, progress=False, echo=lambda s: None)
    train_s = time.perf_counter() - t0

    full = prepare(full_cfg, full_cfg.experiments[0], cache, progress=False)
    all_names = full.train.dataset.class_names
    held = held_out_classes(all_names, fraction, full_cfg.experiments[0].data.split_seed)
    truth = np.array(all_names, dtype=object)[full.test.dataset.labels]
    new = np.isin(truth, held)
    z = full.test.z

    edited = Predictor.load(work / f"{slug}-held-out", name, cache_dir=cache)
    before = predictions(edited, z[~new])
    memory = full.memory
    rows = np.flatnonzero(np.isin(memory.labels_at(np.arange(len(memory))),
                                  [all_names.index(c) for c in held]))
    meta = memory.meta_at(rows, ["id", "text", "thumbnail"])
    t1 = time.perf_counter()
    MemoryEditor.for_predictor(edited).add_embedded(
        memory.keys_at(rows), memory.values_at(rows),
        [all_names[y] for y in memory.labels_at(rows)], meta["text"], meta["id"],
        thumbnails=[t or b"" for t in meta["thumbnail"]], who="study_new_classes")
    edit_s = time.perf_counter() - t1
    label_k = int(edited.model.label_k) if edited.model.label_weight is not None else 10
    retrained = Predictor.load(work / f"{slug}-all", name, cache_dir=cache)
    out = {}
    for method, pred in (("mam_edited", predictions(edited, z)),
                         ("knn_vote_edited", vote_predictions(edited, z, label_k)),
                         ("mam_retrained_all_classes", predictions(retrained, z))):
        out[method] = {"new": accuracy(pred, truth, new), "old": accuracy(pred, truth, ~new),
                       "all": accuracy(pred, truth, np.ones(len(truth), bool))}
    out["mam_before_edit_old"] = accuracy(before, truth[~new], np.ones(int((~new).sum()), bool))
    return {"held_out_classes": held, "classes": len(all_names), "added_entries": int(len(rows)),
            "test_new": int(new.sum()), "test_old": int((~new).sum()), "vote_k": label_k,
            "edit_seconds": round(edit_s, 2), "train_seconds": round(train_s, 1), "top1": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="where the two runs of each case go")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--fraction", type=float, default=0.2)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override of every run, as `ravis run --set` (repeatable)")
    args = p.parse_args(argv)

    from ravis.io import default_cache_dir

    cache = args.cache or default_cache_dir()
    results = {"fraction_held_out": args.fraction, "seed": 0, "overrides": args.set,
               "cases": {name: study(name, args.work, cache, args.fraction, args.set)
                         for name in args.cases.split(",")}}
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
