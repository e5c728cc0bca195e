"""The CLI verbs (see :mod:`ravis.cli` for their arguments)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import InputError


def _cache(args) -> Path:
    from .io import default_cache_dir

    return Path(args.cache or default_cache_dir())


def _run_config(args):
    from .cli import load_run_config

    cfg = load_run_config(args)
    if getattr(args, "strict", False):
        cfg.strict = True
    return cfg


def cmd_demo(args) -> int:
    rc = _run_pipeline(args, resume=True)
    from .report import write_report

    print(f"report: {write_report(args.out)}")
    return rc


def cmd_run(args) -> int:
    return _run_pipeline(args, resume=not args.no_resume)


def cmd_train(args) -> int:
    return _run_pipeline(args, resume=args.resume)


def _run_pipeline(args, resume: bool) -> int:
    from .experiment import run

    t0 = time.perf_counter()
    cfg = _run_config(args)
    run(cfg, args.out, _cache(args), resume=resume, progress=not args.quiet,
        copy_memory=getattr(args, "copy_memory", False))
    print(f"results: {Path(args.out) / 'results.json'}  ({time.perf_counter() - t0:.1f} s in all)")
    return 0


def cmd_embed(args) -> int:
    from .experiment import prepare

    cfg = _run_config(args)
    for exp in cfg.experiments:
        prep = prepare(cfg, exp, _cache(args), progress=not args.quiet, stage="embed")
        print(f"{exp.name}: train {len(prep.train.z)} x {prep.train.z.shape[1]}, "
              f"test {len(prep.test.z)}, skipped {len(prep.skipped)} "
              f"({prep.timings['embed']:.1f} s)")
        for item, reason in prep.skipped:
            print(f"  skipped {item}: {reason}")
    return 0


def cmd_index(args) -> int:
    """Builds each experiment's memory and its index (approximate ones are trained, tuned and
    cached, so `knn` and `run` reuse them); the memory parts go where a run would put them."""
    from .experiment import experiment_dir, prepare
    from .retrieval.memory_index import memory_index
    from .run_folder import save_memory_part

    cfg = _run_config(args)
    for exp in cfg.experiments:
        prep = prepare(cfg, exp, _cache(args), progress=not args.quiet, stage="memory")
        folder = experiment_dir(args.out, exp.name)
        t0 = time.perf_counter()
        index = memory_index(prep.memory, exp.retrieval, _cache(args))
        seconds = time.perf_counter() - t0
        for spec, part in prep.memory.parts:
            save_memory_part(folder, spec, part, Path(args.out), copy=False)
        print(f"{exp.name}: memory of {len(prep.memory)} entries ({prep.memory.dim}-d keys, "
              f"{prep.memory.value_dim}-d values) in {folder}; index {index.spec!r} over "
              f"{index.ntotal} keys ({seconds:.1f} s)")
    return 0


def cmd_knn(args) -> int:
    from .experiment import prepare

    cfg = _run_config(args)
    for exp in cfg.experiments:
        prep = prepare(cfg, exp, _cache(args), progress=not args.quiet, stage="knn")
        print(f"{exp.name}: neighbours of {len(prep.train_I)} train and {len(prep.test_I)} test "
              f"queries, k={prep.test_I.shape[1]} ({prep.timings['knn']:.1f} s)")
    return 0


def cmd_eval(args) -> int:
    """Recomputes every metric from the saved test logits and redraws the plots."""
    from .io import exclusive_lock
    from .run_folder import finish_run, open_run, verify_files

    run_dir = Path(args.run_dir)
    with exclusive_lock(run_dir / ".lock", busy=f"{run_dir}: another ravis command is writing this "
                                               "folder; wait for it"):
        _, record = open_run(run_dir)  # refuses an unfinished run, saying how to finish it
        verify_files(run_dir, record, ["results.json"])
        _eval(run_dir, record)
        finish_run(run_dir)  # results.json and the plots changed: record them
    return 0


def _eval(run_dir: Path, record: dict) -> None:
    from .evaluation.metrics import prediction_metrics
    from .evaluation.report import format_table, plot_shots
    from .experiment import experiment_dir
    from .experiment.run import aggregate_seeds
    from .io import load_json, save_json
    from .run_folder import open_run_memory, read_serving, verify_files

    results = load_json(run_dir / "results.json")
    for entry in results["experiments"]:
        folder = experiment_dir(run_dir, entry["name"])
        verify_files(run_dir, record, [f"{folder.name}/predictions.npz", f"{folder.name}/serving.json"])
        open_run_memory(folder, read_serving(folder))  # refuses a memory gone or changed since
        # The run folder holds the first seed's predictions; the other seeds' results stay.
        served = entry["seeds"][0] if "seeds" in entry else entry
        with np.load(folder / "predictions.npz", allow_pickle=False) as f:
            labels = f["labels"]
            for name in served["methods"]:
                metrics, served["per_class"][name] = prediction_metrics(
                    f[f"logits_{name}"].argmax(1), labels, entry["class_counts"])
                served["methods"][name].update(metrics)
        if "seeds" in entry:
            entry.update(aggregate_seeds([{**entry, **s} for s in entry["seeds"]],
                                         [s["seed"] for s in entry["seeds"]]))
        plot_shots(entry, folder / "shots.png")
        print(format_table(entry))
        print()
    save_json(run_dir / "results.json", results)


def cmd_serve(args) -> int:
    from .predictor import Predictor
    from .serve import serve

    params = {}
    for item in args.search_params:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--search-param {item!r}: expected KEY=VALUE, e.g. nprobe=16")
        try:
            params[key] = float(value) if "." in value else int(value)
        except ValueError:
            raise InputError(f"--search-param {item!r}: the value must be a number, e.g. nprobe=16") from None
    token = _edit_token(args)
    predictor = Predictor.load(args.run_dir, args.experiment, args.method, args.cache,
                               index=args.index, search_params=params, device=args.device)
    print(f"serving {args.run_dir} ({predictor.experiment.name}, {args.method}, memory of "
          f"{predictor.memory.live_count}{', edits allowed' if token else ''}) on "
          f"http://{args.host}:{args.port}/", flush=True)
    serve(predictor, args.host, args.port, max_bytes=int(args.max_upload_mb * 1024 * 1024),
          max_pixels=args.max_pixels, edit_token=token,
          load_options={"cache_dir": args.cache, "index": args.index, "search_params": params,
                        "device": args.device})
    return 0


def _edit_token(args) -> str | None:
    """The bearer token edits need, from --edit-token-file; None without --allow-edits."""
    if not args.allow_edits:
        if args.edit_token_file:
            raise InputError("--edit-token-file needs --allow-edits")
        return None
    if not args.edit_token_file:
        raise InputError("--allow-edits needs --edit-token-file FILE: a file holding the bearer "
                         "token that edit requests must carry")
    try:
        token = Path(args.edit_token_file).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise InputError(f"{args.edit_token_file}: the edit token file is not UTF-8 text ({e})") from None
    if len(token) < 16:
        raise InputError(f"{args.edit_token_file}: the edit token must be at least 16 characters "
                         "(for example: python -c 'import secrets; print(secrets.token_urlsafe())')")
    return token


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0


def cmd_predict(args) -> int:
    from .data import open_image
    from .predictor import Predictor

    predictor = Predictor.load(args.run_dir, args.experiment, args.method, args.cache,
                               device=args.device)
    images = [open_image(p) for p in args.images]
    outputs = predictor.predict(images, top_neighbors=args.neighbors or None)
    if args.json:
        print(json.dumps([{"image": str(p), **o} for p, o in zip(args.images, outputs)], indent=2))
        return 0
    for path, out in zip(args.images, outputs):
        print(f"{path}")
        for c in out["top5"]:
            print(f"  {c['probability']:6.1%}  {c['class']}")
        print("  neighbours by attention (rank: retrieval rank):")
        for n in out["neighbors"]:
            weight = "  -  " if n["weight"] is None else f"{n['weight']:.3f}"
            print(f"    weight {weight}  sim {n['similarity']:.3f}  rank {n['rank']:>3}  "
                  f"{n['text']!r}  [{n['memory_id']}]")
    return 0


def cmd_memory(args) -> int:
    from . import memory_commands

    return getattr(memory_commands, f"cmd_memory_{args.memory_verb}")(args)


def cmd_presets(args) -> int:
    """Each packaged preset with the command its first comment line gives."""
    from .cli import CONFIG_DIR, preset_names

    names = preset_names()
    width = max(map(len, names), default=0)
    for name in names:
        first = (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()[:3]
        says = next((line.lstrip("# ").strip() for line in first[1:] if line.startswith("#")), "")
        print(f"{name:<{width}}  {says}")
    return 0
