"""Fine-tuning the encoder on Tux Paint: the memory keys (train.finetune_keys) and the
encoder's learning rate (train.encoder_lr).

The demo's ``tuxpaint`` experiment (EfficientNet-Lite0 at 224 px, caption values, seeds
0, 1, 2) is run with the frozen encoder, and fine-tuned with the memory re-embedded
(``reembed``) or with the frozen encoder's keys (``frozen``), at encoder learning rates 1e-5
and 1e-4. Every tuned value (the fine-tuning epoch included) is chosen on validation, as in
any run. Printed and written: each method's test top-1 and balanced accuracy per seed (mean
and standard deviation printed), the fine-tuning epoch validation kept and its validation
score. ``--diagnostics`` adds MAM runs that keep every fine-tuned model after its last epoch.
A variant whose run folder finished with the same config is read, not run again.

    python benchmarks/study_finetune.py --work /tmp/finetune --diagnostics \\
        --out benchmarks/results/finetune.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: variant -> its train settings
VARIANTS = {"frozen encoder": {},
            "fine-tuned, keys re-embedded": {"finetune_encoder": True, "finetune_keys": "reembed", "encoder_lr": 1e-5},
            "fine-tuned, frozen keys": {"finetune_encoder": True, "finetune_keys": "frozen", "encoder_lr": 1e-5},
            "fine-tuned, keys re-embedded, encoder lr 1e-4":
                {"finetune_encoder": True, "finetune_keys": "reembed", "encoder_lr": 1e-4},
            "fine-tuned, frozen keys, encoder lr 1e-4":
                {"finetune_encoder": True, "finetune_keys": "frozen", "encoder_lr": 1e-4}}
#: Diagnostics, not choices: with no validation split every fine-tuned model is kept after
#: its last epoch (no epoch selection, no vote fallback, no post-hoc adjustment), which
#: shows what each keys policy does to a fine-tuned MAM; no default is chosen from them.
UNSELECTED = {"val_fraction": 0.0, "posthoc_tau": 0.0, "tau": 1.0}
DIAGNOSTICS = {"MAM fine-tuned, last epoch kept, keys re-embedded":
                   {**UNSELECTED, "finetune_encoder": True, "finetune_keys": "reembed", "encoder_lr": 1e-4},
               "MAM fine-tuned, last epoch kept, frozen keys":
                   {**UNSELECTED, "finetune_encoder": True, "finetune_keys": "frozen", "encoder_lr": 1e-4},
               "MAM frozen encoder, last epoch kept": UNSELECTED}


def config(train: dict, methods: list[str], seeds: list[int]):
    from ravis.config import load_preset

    cfg = load_preset(ROOT / "configs" / "demo.yaml")
    exp = next(e for e in cfg.experiments if e.name == "tuxpaint")
    exp = dataclasses.replace(exp, seeds=seeds, methods=methods, train=dataclasses.replace(exp.train, **train))
    return dataclasses.replace(cfg, experiments=[exp])


def finished(folder: Path, cfg) -> dict | None:
    """The results entry of a variant's run folder that finished with this same config (a
    study killed midway resumes at the variant it was running), else None."""
    from ravis.config import to_dict
    from ravis.experiment.run import seeds_of, with_seed
    from ravis.run_folder import RunFolder, RunFolderError

    try:
        saved, _ = RunFolder(folder).open()
    except (FileNotFoundError, RunFolderError):
        return None
    first = dataclasses.replace(cfg, experiments=[with_seed(e, seeds_of(e)[0]) for e in cfg.experiments])
    if to_dict(saved) != to_dict(first):
        return None
    return RunFolder(folder).read_results()["experiments"][0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the runs and their cache")
    p.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    p.add_argument("--methods", default="linear,mam,knn_vote")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--diagnostics", action="store_true",
                   help="also MAM with every fine-tuned model kept after its last epoch")
    args = p.parse_args(argv)
    from ravis.experiment.run import run

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    plan = [(v, o, args.methods.split(",")) for v, o in VARIANTS.items()]
    plan += [(v, o, ["mam"]) for v, o in DIAGNOSTICS.items()] if args.diagnostics else []
    for variant, overrides, methods in plan:
        t = time.perf_counter()
        cfg = config(overrides, methods, seeds)
        folder = args.work / variant.replace(" ", "_").replace(",", "")
        entry = finished(folder, cfg) or run(cfg, folder, args.work / "cache", progress=False,
                                             echo=lambda s: None)["experiments"][0]
        per_seed = entry.get("seeds", [entry])
        rows[variant] = {"seconds": time.perf_counter() - t, "methods": {}}
        for m in methods:
            top1 = [100 * s["methods"][m]["top1"] for s in per_seed]
            bal = [100 * s["methods"][m]["balanced"] for s in per_seed]
            tuned = [s["details"][m].get("finetune", {}) for s in per_seed]
            rows[variant]["methods"][m] = {
                "top1": top1, "balanced": bal,
                "finetune_epoch_kept": [t.get("best_epoch") for t in tuned],
                # validation score (frozen keys, as in training) of the kept weights, and before fine-tuning
                "finetune_val": [t.get("val_score") for t in tuned],
                "finetune_val_before": [t.get("initial_score") for t in tuned]}
        print(f"{variant}: {rows[variant]['seconds']:.0f} s", flush=True)
    for variant, row in rows.items():
        cells = [f"{m} {np.mean(r['top1']):5.1f}±{np.std(r['top1']):.1f} ({np.mean(r['balanced']):4.1f})"
                 for m, r in row["methods"].items()]
        print(f"{variant:<50} " + "  ".join(cells))
    print("top-1 mean±std over seeds (balanced accuracy)")
    if args.out:
        from ravis.io import save_json

        save_json(args.out, {"experiment": "tuxpaint", "seeds": seeds, "date": time.strftime("%Y-%m-%d"),
                             "variants": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
