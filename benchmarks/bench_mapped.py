"""Training on a memory read from its shards on disk against the same memory in RAM.

The demo's fmnist-lt/B memory (the 60k Fashion-MNIST training split with label-prompt
values), with all 60k training images as queries (their own entries excluded), is prepared in RAM, saved in the on-disk format, and prepared again from the disk;
then each method trains on three, alternating, ``--repeats`` times: in RAM; mapped, with the
retrieved rows gathered once from the shards (what a memory within ``train.memory_rows_budget``
gets); and mapped with every batch reading its rows from the shards (budget 0, what a memory
past the budget gets). Printed: the seconds of each, the ratio in-RAM time / mapped time (goal:
>= 0.8), and whether the logits are equal.

    python benchmarks/bench_mapped.py --out benchmarks/results/mapped-vs-ram.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="mam,mean_knn")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float16", "float32"])
    p.add_argument("--epochs", type=int, default=6,
                   help="train.epochs (and min_steps 0): the ratio is per training step")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from ravis.config import load_preset
    from ravis.experiment import train_method
    from ravis.experiment.prepare import prepare
    from ravis.io import default_cache_dir

    cache = args.cache or default_cache_dir()
    steps = [f"train.epochs={args.epochs}", "train.min_steps=0", "train.warmup_epochs=1"]
    whole = "data: {longtail: false}"  # 60k training queries: enough steps to time
    overrides = [f"experiments=[{{name: B, {whole}, memory: {{source: full-train, values: label_prompt}}}}]", *steps]
    cfg = load_preset(ROOT / "configs" / "demo.yaml", overrides)
    ram = prepare(cfg, cfg.experiments[0], cache, progress=False)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        part = ram.memory.parts[0][1]
        part.save(Path(tmp) / "B", dtype=args.dtype)
        cfg2 = load_preset(ROOT / "configs" / "demo.yaml",
                           [f"experiments=[{{name: B, {whole}, memory: {{source: {Path(tmp) / 'B'}}}}}]", *steps])
        t = time.perf_counter()
        mapped = prepare(cfg2, cfg2.experiments[0], cache, progress=False)
        prepare_s = time.perf_counter() - t
        cfg3 = load_preset(ROOT / "configs" / "demo.yaml",
                           [f"experiments=[{{name: B, {whole}, memory: {{source: {Path(tmp) / 'B'}}}}}]", *steps,
                            "train.memory_rows_budget=0"])
        per_batch = prepare(cfg3, cfg3.experiments[0], cache, progress=False)
        variants = (("ram", ram), ("mapped", mapped), ("mapped_per_batch", per_batch))
        report = {"memory_rows": len(ram.memory), "dtype": args.dtype, "train_queries": len(ram.train.z),
                  "mapped_prepare_seconds": round(prepare_s, 2), "methods": {}}
        for method in args.methods.split(","):
            times = {name: [] for name, _ in variants}
            logits = {}
            for r in range(args.repeats):
                for name, prep in variants:
                    with tempfile.TemporaryDirectory(dir=cache) as scratch:  # no model cache hit
                        t = time.perf_counter()
                        _, result = train_method(method, prep, Path(scratch), cfg.text_encoder,
                                                 checkpoint_dir=Path(scratch) / "ckpt")
                        times[name].append(time.perf_counter() - t)
                    logits[name] = result.logits
            best = {k: min(v) for k, v in times.items()}
            entry = {"seconds": {k: [round(x, 2) for x in v] for k, v in times.items()}}
            for name in ("mapped", "mapped_per_batch"):
                entry[f"ratio_ram_over_{name}"] = round(best["ram"] / best[name], 3)
                entry[f"{name}_logits_equal"] = bool(np.array_equal(logits["ram"], logits[name]))
                print(f"{method}: in RAM {best['ram']:.1f} s, {name} {best[name]:.1f} s, ratio "
                      f"{entry[f'ratio_ram_over_{name}']:.2f} (goal >= 0.8), logits equal "
                      f"{entry[f'{name}_logits_equal']}", flush=True)
            report["methods"][method] = entry
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
