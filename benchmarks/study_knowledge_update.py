"""Knowledge update by editing the memory: the model trained with fmnist-lt/C's noisy memory
(40% of its 60k entries name a wrong class), served after those entries are relabelled to
their true class by one edit, against the model trained with the clean memory (B).

The demo's run folder is copied (the edit goes to the copy's log), both models are loaded as
``ravis serve`` would, and the 10k test images are predicted from their cached embeddings:

    before   C's model over C's memory
    after    C's model over C's memory with the wrong entries relabelled (label, text and
             label-prompt value), no retraining
    clean    B's model over B's memory

Printed and written: top-1 of each, and the share of the gap closed, (after - before) /
(clean - before).

    python benchmarks/study_knowledge_update.py --run demo-out --work /tmp/knowledge \
        --out benchmarks/results/knowledge-update.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from study_new_classes import predictions  # noqa: E402  (same batching)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a finished `ravis demo` run folder")
    p.add_argument("--work", type=Path, required=True, help="where the run is copied to be edited")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from ravis.editor import MemoryEditor
    from ravis.experiment.prepare import prepare
    from ravis.io import default_cache_dir
    from ravis.predictor import Predictor
    from ravis.run_folder import RunFolder

    cache = args.cache or default_cache_dir()
    run = args.work / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("report", "report.html", ".lock"))
    cfg = RunFolder(run).load_config()
    exp = next(e for e in cfg.experiments if e.name == "fmnist-lt/C")
    test = prepare(cfg, exp, cache, progress=False).test
    truth = np.array(test.dataset.class_names, dtype=object)[test.dataset.labels]

    noisy = Predictor.load(run, "fmnist-lt/C", cache_dir=cache)
    clean = Predictor.load(run, "fmnist-lt/B", cache_dir=cache)
    top1 = {"before": predictions(noisy, test.z), "clean": predictions(clean, test.z)}
    rows = np.arange(len(noisy.memory))
    wrong = rows[noisy.memory.labels_at(rows) != clean.memory.labels_at(rows)]
    ids = noisy.memory.meta_at(wrong, ["id"])["id"]
    assert ids == clean.memory.meta_at(wrong, ["id"])["id"], "B and C must list the same entries"
    names = clean.memory.class_names
    changes = {i: names[y] for i, y in zip(ids, clean.memory.labels_at(wrong))}
    t0 = time.perf_counter()
    MemoryEditor.for_predictor(noisy).relabel(changes, who="study_knowledge_update")
    edit_s = time.perf_counter() - t0
    top1["after"] = predictions(noisy, test.z)
    acc = {k: round(100 * float((v == truth).mean()), 2) for k, v in top1.items()}
    gap = acc["clean"] - acc["before"]
    result = {"memory_entries": int(len(rows)), "relabelled": int(len(wrong)),
              "relabel_seconds": round(edit_s, 2), "test_images": int(len(truth)), "top1": acc,
              "gap_closed": round((acc["after"] - acc["before"]) / gap, 3) if gap else None}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
