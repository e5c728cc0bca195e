"""The verbs over a finished run folder: ``ravis eval`` (tables, metrics and plots again),
``report`` (HTML), ``predict`` (top classes and neighbours of images) and ``serve`` (the
prediction API and web page)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..methods import DEFAULT_SERVED, METHODS
from ._arguments import add_cache, add_device


def add_verbs(sub) -> None:
    add_eval(sub)
    add_serve(sub)
    add_report(sub)
    add_predict(sub)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="re-evaluate a finished run: tables, metrics, plots")
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    p.set_defaults(handler=evaluate)


def evaluate(args) -> None:
    """Recomputes every metric from the saved test logits and redraws the plots."""
    from ..evaluation.tables import format_table
    from ..experiment.results import reevaluate

    for entry in reevaluate(args.run_dir):
        print(format_table(entry))
        print()


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a finished run")
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    p.add_argument("--out", type=Path, default=None, help="HTML file (default RUN_DIR/report.html)")
    p.set_defaults(handler=report)


def report(args) -> None:
    from ..report import write_report

    print(f"report: {write_report(args.run_dir, args.out)}")


def _model_choice(p, what: str, default_experiment: str = "the first") -> None:
    p.add_argument("--experiment", help=f"which experiment of the run (default: {default_experiment})")
    servable = ", ".join(m for m in METHODS if METHODS[m].servable)
    p.add_argument("--method", default=DEFAULT_SERVED, help=f"trained method to {what}, one of {servable}")


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-5 classes of images, what decided them, and the neighbours it leaned on")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run folder")
    # "+", not "*": "*" matches nothing before an option, and `predict RUN --experiment X
    # IMAGE` would then refuse IMAGE
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="the image files to predict")
    p.add_argument("--run", type=Path, default=None, metavar="RUN_DIR",
                   help="the run folder as an option, the older form: the same as giving it first")
    _model_choice(p, "use", "the run's only one; a run of several needs it")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--neighbors", type=int, default=10,
                   help="neighbours to show, most decisive first (0: all k)")
    add_cache(p, "indexes built for predicting")
    add_device(p)
    p.set_defaults(handler=predict)


def run_alias(argv: list[str]) -> list[str]:
    """``predict --run RUN IMAGE...`` (the older form) as ``predict RUN IMAGE...``: argparse
    cannot take the run folder both as an option and as the first positional and still let
    options come between the folder and the images."""
    if not argv or argv[0] != "predict":
        return argv
    for i, a in enumerate(argv):
        if a == "--run" and i + 1 < len(argv):
            return [argv[0], argv[i + 1], *argv[1:i], *argv[i + 2:]]
        if a.startswith("--run="):
            return [argv[0], a.partition("=")[2], *argv[1:i], *argv[i + 1:]]
    return argv


def predict(args) -> None:
    from ..data import open_image
    from ..predictor import Predictor

    run_dir, paths = args.run_dir, args.images
    experiment = _check_choice(run_dir, args.experiment, args.method, one_experiment=True)
    predictor = Predictor.load(run_dir, experiment, args.method, args.cache, device=args.device)
    images = [open_image(p) for p in paths]
    outputs = predictor.predict(images, top_neighbors=args.neighbors or None)
    if args.json:
        print(json.dumps([{"image": str(p), **o} for p, o in zip(paths, outputs)], indent=2))
        return
    first = outputs[0]  # one model answered them all
    print(f"experiment {first['experiment']}, method {first['method']} ({first['method_label']})"
          + ("" if first["calibrated"] else "; probabilities uncalibrated: the run recorded no temperature"))
    for path, out in zip(paths, outputs):
        print(_describe(path, out))


# what orders the neighbours, as the text output names it (ravis.explain.decided_by)
_DECIDED = {"vote_weight": ("vote share", "vote"), "contribution": ("term in the score", "term"),
            "attention": ("attention", "attention")}


def _describe(path: Path, out: dict) -> str:
    """One image's answer as text: what decided, the top classes with their terms, the
    neighbours in the order of what decided."""
    lines = [f"{path}"]
    if out["in_memory"]:
        lines.append(f"  this image is memory entry {out['in_memory']} (or a copy of it)")
    lines.append(f"  {out['explanation']}")
    for c, e in zip(out["top5"], out["evidence"]):
        terms = " ".join(f"{k} {v:+.2f}" for k, v in e["parts"].items() if v is not None)
        lines.append(f"  {c['probability']:6.1%}  {c['class']:<24} score {e['score']:+.2f} = {terms}")
    key = out["decided_by"]
    if key is None:
        lines.append("  nearest memory entries (this model reads none of them):")
    else:
        lines.append(f"  neighbours by {_DECIDED[key][0]} (rank: retrieval rank):")
    for n in out["neighbors"]:
        weight = f"{_DECIDED[key][1]} {n[key]:.3f}  " if key else ""
        lines.append(f"    {weight}sim {n['similarity']:.3f}  rank {n['rank']:>3}  {n['text']!r}  [{n['memory_id']}]")
    return "\n".join(lines)


def _check_choice(run_dir: Path, experiment: str | None, method: str, one_experiment: bool = False) -> str:
    """The experiment ``--experiment`` names (default: the first; with ``one_experiment``, a
    run of several must name one), refusing an unknown one or a ``--method`` it cannot serve,
    listing the choices: read from the config alone, before anything loads."""
    from ..run_folder import RunFolder

    run = RunFolder(run_dir)
    cfg = run.load_config()
    names = [e.name for e in cfg.experiments]
    if one_experiment and experiment is None and len(names) > 1:
        raise InputError(f"{run_dir} has {len(names)} experiments: choose one with --experiment "
                         f"NAME from {names}")
    exp, _ = run.pick(cfg, experiment)
    servable = [m for m in exp.methods if METHODS[m].servable]
    if method not in servable:
        why = ("is not a method" if method not in METHODS else
               "was not trained in this run" if METHODS[method].servable else
               "cannot be served (only trained models whose inputs are the neighbours themselves)")
        raise InputError(f"--method {method!r} {why}; choose from {servable} (servable and "
                         f"trained in experiment {exp.name!r})")
    return exp.name


def add_serve(sub) -> None:
    from ..serve import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

    p = sub.add_parser("serve", help="serve a trained run: POST /predict, a web page, /metrics")
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    _model_choice(p, "serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20,
                   help="largest accepted image file (MB)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="largest accepted image (width x height); more is refused as a decompression bomb")
    p.add_argument("--index", default=None,
                   help="serve with this index spec instead of the run's, e.g. faiss:IVF256,Flat")
    p.add_argument("--search-param", dest="search_params", action="append", default=[], metavar="KEY=VALUE",
                   help="index search parameter, e.g. nprobe=16 (repeatable)")
    add_cache(p, "indexes built for serving")
    add_device(p)
    p.add_argument("--allow-edits", action="store_true",
                   help="accept POST /memory, DELETE /memory/ID and POST /memory/relabel (needs --edit-token-file)")
    p.add_argument("--edit-token-file", type=Path, default=None,
                   help="file holding the bearer token that edit requests must send")
    p.set_defaults(handler=serve)


def serve(args) -> None:
    from ..predictor import Predictor
    from ..serve import serve as run_server

    params = _search_params(args.search_params)
    token = _edit_token(args)
    experiment = _check_choice(args.run_dir, args.experiment, args.method)
    predictor = Predictor.load(args.run_dir, experiment, args.method, args.cache,
                               index=args.index, search_params=params, device=args.device)
    print(f"serving {args.run_dir} ({predictor.experiment.name}, {args.method}, memory of "
          f"{predictor.memory.live_count}{', edits allowed' if token else ''}) on "
          f"http://{args.host}:{args.port}/", flush=True)
    run_server(predictor, args.host, args.port, max_bytes=int(args.max_upload_mb * 1024 * 1024),
               max_pixels=args.max_pixels, edit_token=token,
               load_options={"cache_dir": args.cache, "index": args.index, "search_params": params,
                             "device": args.device})


def _search_params(items: list[str]) -> dict:
    """--search-param KEY=VALUE pairs as {key: number}."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--search-param {item!r}: expected KEY=VALUE, e.g. nprobe=16")
        try:
            params[key] = float(value) if "." in value else int(value)
        except ValueError:
            raise InputError(f"--search-param {item!r}: the value must be a number, e.g. nprobe=16") from None
    return params


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
