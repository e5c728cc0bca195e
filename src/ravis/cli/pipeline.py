"""The pipeline verbs: ``ravis demo``, ``run`` and ``train`` (the whole pipeline); ``embed``,
``index`` and ``knn`` (one cached, resumable stage each); ``presets``."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import config_path, preset_names
from ._arguments import (add_common, add_config_source, add_copy_memory, add_seeds, cache_dir,
                         demo_preset, run_config)


def add_verbs(sub) -> None:
    add_demo(sub)
    add_run(sub)
    add_stages(sub)
    add_train(sub)
    add_presets(sub)


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the embedded-default experiments (Fashion-MNIST-LT, Tux Paint)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="the run folder to write")
    add_seeds(p)
    add_copy_memory(p)
    add_common(p)
    p.set_defaults(handler=demo)


def demo(args) -> None:
    from ..report import write_report

    _run_pipeline(args, run_config(args, demo_preset()), resume=True)
    print(f"report: {write_report(args.out)}")


def add_run(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline on a dataset or preset")
    add_config_source(p)
    p.add_argument("--out", type=Path, required=True, help="the run folder to write (resumed if it exists)")
    p.add_argument("--no-resume", action="store_true", help="ignore per-epoch checkpoints")
    add_seeds(p)
    add_copy_memory(p)
    add_common(p)
    p.set_defaults(handler=run)


def run(args) -> None:
    _run_pipeline(args, run_config(args), resume=not args.no_resume)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train and evaluate every method (resumes from checkpoints)")
    add_config_source(p)
    p.add_argument("--out", type=Path, required=True, help="the run folder to write")
    p.add_argument("--resume", action="store_true", default=True,
                   help="resume from the last completed epoch (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start training afresh")
    add_seeds(p)
    add_copy_memory(p)
    add_common(p)
    p.set_defaults(handler=train)


def train(args) -> None:
    _run_pipeline(args, run_config(args), resume=args.resume)


def _run_pipeline(args, cfg, resume: bool) -> None:
    from ..experiment import run as run_experiments
    from ..run_folder import RunFolder

    t0 = time.perf_counter()
    run_experiments(cfg, args.out, cache_dir(args), resume=resume, progress=not args.quiet,
                    copy_memory=args.copy_memory)
    print(f"results: {RunFolder(args.out).results}  ({time.perf_counter() - t0:.1f} s in all)")


def add_stages(sub) -> None:
    for verb, text, handler in [("embed", "embed the images of each experiment (cached)", embed),
                                ("index", "build each experiment's memory and its k-NN index; save them",
                                 index),
                                ("knn", "precompute neighbours of the train and test splits (cached)", knn)]:
        p = sub.add_parser(verb, help=text)
        add_config_source(p)
        if verb == "index":
            p.add_argument("--out", type=Path, required=True, help="folder for memories and indexes")
        add_common(p, trains=False)
        p.set_defaults(handler=handler)


def embed(args) -> None:
    from ..experiment import prepare

    cfg = run_config(args)
    for exp in cfg.experiments:
        prep = prepare(cfg, exp, cache_dir(args), progress=not args.quiet, stage="embed")
        print(f"{exp.name}: train {len(prep.train.z)} x {prep.train.z.shape[1]}, "
              f"test {len(prep.test.z)}, skipped {len(prep.skipped)} "
              f"({prep.timings['embed']:.1f} s)")
        for item, reason in prep.skipped:
            print(f"  skipped {item}: {reason}")


def index(args) -> None:
    """Builds each experiment's memory and its index (approximate ones are trained, tuned and
    cached, so `knn` and `run` reuse them); the memory parts go where a run would put them."""
    from ..experiment import prepare
    from ..memory.indexing import memory_index
    from ..run_folder import RunFolder

    cfg = run_config(args)
    for exp in cfg.experiments:
        prep = prepare(cfg, exp, cache_dir(args), progress=not args.quiet, stage="memory")
        folder = RunFolder(args.out).experiment(exp.name)
        t0 = time.perf_counter()
        searcher = memory_index(prep.memory, exp.retrieval, cache_dir(args))
        seconds = time.perf_counter() - t0
        for spec, part in prep.memory.parts:
            folder.save_memory_part(spec, part, copy=False)
        print(f"{exp.name}: memory of {len(prep.memory)} entries ({prep.memory.dim}-d keys, "
              f"{prep.memory.value_dim}-d values) in {folder.path}; index {searcher.spec!r} over "
              f"{searcher.ntotal} keys ({seconds:.1f} s)")


def knn(args) -> None:
    from ..experiment import prepare

    cfg = run_config(args)
    for exp in cfg.experiments:
        prep = prepare(cfg, exp, cache_dir(args), progress=not args.quiet, stage="knn")
        print(f"{exp.name}: neighbours of {len(prep.train_I)} train and {len(prep.test_I)} test "
              f"queries, k={prep.test_I.shape[1]} ({prep.timings['knn']:.1f} s)")


def add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the presets that -c takes by name")
    p.set_defaults(handler=presets)


def presets(args) -> None:
    """Each packaged preset with the command its first comment line gives."""
    names = preset_names()
    width = max(map(len, names), default=0)
    for name in names:
        first = config_path(name).read_text().splitlines()[:3]
        says = next((line.lstrip("# ").strip() for line in first[1:] if line.startswith("#")), "")
        print(f"{name:<{width}}  {says}")
