"""The verbs over a finished run folder: ``ravis eval`` (tables, metrics and plots again),
``report`` (HTML), ``predict`` (top classes and neighbours of images) and ``serve`` (the
prediction API and web page)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..methods import DEFAULT_SERVED
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
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="HTML file (default RUN_DIR/report.html)")
    p.set_defaults(handler=report)


def report(args) -> None:
    from ..report import write_report

    print(f"report: {write_report(args.run_dir, args.out)}")


def _model_choice(p, what: str) -> None:
    p.add_argument("--experiment", help="which experiment of the run (default: the first)")
    p.add_argument("--method", default=DEFAULT_SERVED, help=f"trained method to {what}")


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-5 classes and the 10 most-attended neighbours of images")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--run", dest="run_dir", type=Path, required=True, help="a finished run folder")
    _model_choice(p, "use")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--neighbors", type=int, default=10,
                   help="most-attended neighbours to show (0: all k)")
    add_cache(p, "indexes built for predicting")
    add_device(p)
    p.set_defaults(handler=predict)


def predict(args) -> None:
    from ..data import open_image
    from ..predictor import Predictor

    predictor = Predictor.load(args.run_dir, args.experiment, args.method, args.cache,
                               device=args.device)
    images = [open_image(p) for p in args.images]
    outputs = predictor.predict(images, top_neighbors=args.neighbors or None)
    if args.json:
        print(json.dumps([{"image": str(p), **o} for p, o in zip(args.images, outputs)], indent=2))
        return
    for path, out in zip(args.images, outputs):
        print(f"{path}")
        for c in out["top5"]:
            print(f"  {c['probability']:6.1%}  {c['class']}")
        print("  neighbours by attention (rank: retrieval rank):")
        for n in out["neighbors"]:
            weight = "  -  " if n["weight"] is None else f"{n['weight']:.3f}"
            print(f"    weight {weight}  sim {n['similarity']:.3f}  rank {n['rank']:>3}  "
                  f"{n['text']!r}  [{n['memory_id']}]")


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
    predictor = Predictor.load(args.run_dir, args.experiment, args.method, args.cache,
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
