"""``ravis <verb>``: a thin command line over :mod:`ravis.experiment`.

Verbs: demo, run (whole pipeline); embed, index, knn, train, eval, predict (one stage each,
cached and resumable); serve (prediction API and web page), report (HTML); presets; memory
build|add|verify|index|search|edit|compact|import|export (sharded web-scale memories).
``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # the presets, shipped in the package
DESCRIPTION = ("ravis: image recognition that retrieves from a large image-text memory (Iscen, "
               "Fathi, Schmid, CVPR 2023). Run `ravis VERB --help` for a verb's options, "
               "`ravis presets` for the presets that -c takes by name.")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, unless the help already says it or there
    is none worth showing (unset, off, empty)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings
                or action.default in (None, False, [], argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def find_preset(spec: str) -> Path:
    """A preset given by path (``configs/tiny.yaml``) or by name (``tiny``, ``imagenet_lt``)."""
    path = Path(spec)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{spec.removesuffix('.yaml')}.yaml"
    if "/" not in spec and named.is_file():
        return named
    raise FileNotFoundError(f"no preset {spec!r}: not a file, and not one of the presets "
                            f"({', '.join(preset_names())})")


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _common(p: argparse.ArgumentParser, trains: bool = True) -> None:
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder for models, embeddings, neighbours (default $RAVIS_CACHE or ~/.cache/ravis)")
    if trains:
        p.add_argument("--recipe", choices=["ravis", "paper"], default=None,
                       help="training recipe: the ravis defaults, or the paper's settings as published "
                            "(default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=1e-3 (repeatable)")
    _device(p)
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error, not a skip")
    p.add_argument("--quiet", action="store_true", help="no progress bars, and no faiss or ScaNN chatter")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log more (every training epoch), and print the full traceback of an error")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="auto (the first GPU where there is one, else the CPU), cpu, cuda or cuda:N "
                        "(default: the config's run.device, auto)")


def _config_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="PRESET",
                   help="a preset, by name (tiny, demo, imagenet_lt; see `ravis presets`) or by YAML path")
    p.add_argument("--dataset", help="instead of a preset: fashion-mnist, tuxpaint, imagefolder:PATH, "
                                     "lt-split:IMAGE_ROOT:TRAIN_FILE:TEST_FILE")
    p.add_argument("--class-depth", type=int, default=1, help="folder level that names the class")
    p.add_argument("--encoder", default="efficientnet_lite0", help="image encoder spec")
    p.add_argument("--text-encoder", default="minilm", help="text encoder spec")


def _seeds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run each experiment once per seed (training seed and split seed) and report "
                        "mean and standard deviation, e.g. --seeds 0,1,2 (default: the config's)")


def _copy_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--copy-memory", action="store_true",
                   help="copy the memory folders the run reads into the run folder (self-contained; "
                        "default: refer to them by path and manifest digest)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ravis", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("demo", help="the embedded-default experiments (Fashion-MNIST-LT, Tux Paint)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="the run folder to write")
    _seeds(p)
    _copy_memory(p)
    _common(p)

    p = sub.add_parser("run", help="the whole pipeline on a dataset or preset")
    _config_source(p)
    p.add_argument("--out", type=Path, required=True, help="the run folder to write (resumed if it exists)")
    p.add_argument("--no-resume", action="store_true", help="ignore per-epoch checkpoints")
    _seeds(p)
    _copy_memory(p)
    _common(p)

    for verb, text in [("embed", "embed the images of each experiment (cached)"),
                       ("index", "build each experiment's memory and its k-NN index; save them"),
                       ("knn", "precompute neighbours of the train and test splits (cached)")]:
        p = sub.add_parser(verb, help=text)
        _config_source(p)
        if verb == "index":
            p.add_argument("--out", type=Path, required=True, help="folder for memories and indexes")
        _common(p, trains=False)

    p = sub.add_parser("train", help="train and evaluate every method (resumes from checkpoints)")
    _config_source(p)
    p.add_argument("--out", type=Path, required=True, help="the run folder to write")
    p.add_argument("--resume", action="store_true", default=True,
                   help="resume from the last completed epoch (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start training afresh")
    _seeds(p)
    _copy_memory(p)
    _common(p)

    p = sub.add_parser("eval", help="re-evaluate a finished run: tables, metrics, plots")
    p.add_argument("run_dir", type=Path, help="a finished run folder")

    sub.add_parser("presets", help="list the presets that -c takes by name")
    _serving_verbs(sub)

    p = sub.add_parser("predict", help="top-5 classes and the 10 most-attended neighbours of images")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--run", dest="run_dir", type=Path, required=True, help="a finished run folder")
    p.add_argument("--experiment", help="which experiment of the run (default: the first)")
    p.add_argument("--method", default="mam", help="trained method to use (default mam)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--neighbors", type=int, default=10,
                   help="most-attended neighbours to show (0: all k)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder for indexes built for predicting (default $RAVIS_CACHE or ~/.cache/ravis)")
    _device(p)

    _memory_verbs(sub)
    _verbose_everywhere(parser)
    return parser


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """Gives every verb that lacks one a -v: an error is one line, -v adds its traceback."""
    parser.formatter_class = _HelpFormatter  # and every default shown after its help
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if "--verbose" not in parser._option_string_actions:
            parser.add_argument("-v", "--verbose", action="store_true",
                                help="log more, and print the full traceback of an error")
        return
    for child in subs[0].choices.values():
        _verbose_everywhere(child)


def _memory_verbs(sub) -> None:
    """``ravis memory <build|add|verify|index|search|import|export>``: sharded web-scale
    memories (ravis.memory_commands)."""
    memory = sub.add_parser("memory", help="build, extend and check sharded image-text memories")
    verbs = memory.add_subparsers(dest="memory_verb", required=True)

    def sources(p):
        p.add_argument("--source", dest="sources", action="append", required=True, metavar="SPEC",
                       help="wds:PATTERN (tar shards, braces allowed), parquet:PATTERN[:IMAGE_COL"
                            "[:CAPTION_COL]], imagefolder:PATH, tuxpaint[:ROOT], emoji[:ROOT] "
                            "(repeatable)")
        p.add_argument("--rows-per-shard", type=int, default=10000,
                       help="shard size for folder sources (a tar or parquet file is one shard)")
        p.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="this process, or one Ray task per input shard")
        p.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
        p.add_argument("--strict", action="store_true",
                       help="a skipped row, an empty or unreadable shard is an error")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--cache", type=Path, default=None, help="model cache folder")

    p = verbs.add_parser("build", help="embed image-text collections into a sharded memory (resumes)")
    sources(p)
    p.add_argument("--out", type=Path, required=True, help="the memory folder (MEMDIR)")
    p.add_argument("--encoder", default="efficientnet_lite0", help="image encoder spec (keys)")
    p.add_argument("--text-encoder", default="minilm", help="text encoder spec (values)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="stored dtype of keys and values")
    p.add_argument("--no-thumbnails", action="store_true", help="no 64 px thumbnails in the metadata")

    p = verbs.add_parser("add", help="append shards from new sources to a memory (and its index)")
    p.add_argument("memdir", type=Path)
    sources(p)

    p = verbs.add_parser("verify", help="re-check a memory's checksums, shapes and row counts, "
                                        "and its index's checksums")
    p.add_argument("memdir", type=Path)

    p = verbs.add_parser("index", help="choose, build and tune the memory's k-NN index for a RAM budget")
    p.add_argument("memdir", type=Path)
    p.add_argument("--budget", default="16G", help="RAM the index may use while searching (e.g. 16G)")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@k the search parameters must reach")
    p.add_argument("--k", type=int, default=100, help="neighbours per query the recall is measured at")
    p.add_argument("--backend", choices=["faiss", "scann"], default="faiss", help="the index library")
    p.add_argument("--factory", default=None, help="a faiss factory string instead of the budget's choice")
    p.add_argument("--from-faiss", type=Path, default=None, metavar="FILE",
                   help="attach this faiss index (e.g. autofaiss's knn.index, with its infos.json) "
                        "instead of building one; its search parameters are tuned the same way")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="encode the shards into the index here, or one Ray task per shard")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = verbs.add_parser("edit", help="add, delete or relabel entries of a finished run's memory; "
                                      "served models use the edited memory with no retraining")
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    p.add_argument("--experiment", help="which experiment's memory (default: the run's first)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--add", nargs="+", type=Path, metavar="IMAGE",
                      help="images to add, with --label and/or --caption")
    what.add_argument("--delete", nargs="+", metavar="ID", help="entry ids to delete")
    what.add_argument("--delete-class", metavar="NAME", help="delete every entry of this class")
    what.add_argument("--delete-source", metavar="NAME", help="delete every entry of this source")
    what.add_argument("--relabel", nargs="+", metavar="ID=LABEL", help="give entries another class")
    p.add_argument("--label", help="the class of the added images; a name the model was not "
                                   "trained on makes a new class, predicted from the memory")
    p.add_argument("--caption", help="the caption of the added images")
    p.add_argument("--json", action="store_true", help="print the edit records as JSON")
    p.add_argument("--cache", type=Path, default=None, help="model cache folder")

    p = verbs.add_parser("compact", help="fold a run's memory edits into new shards and a new index")
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    p.add_argument("--experiment", help="which experiment's memory (default: the run's first)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cache", type=Path, default=None, help="model cache folder")

    p = verbs.add_parser("search", help="the memory entries nearest to images (uses the built index)")
    p.add_argument("memdir", type=Path)
    p.add_argument("images", nargs="*", type=Path, help="query images")
    p.add_argument("--queries", type=Path, help="instead of images: a .npy of (n, d) query embeddings")
    p.add_argument("--encoder", default="efficientnet_lite0", help="the image encoder that made the keys")
    p.add_argument("--k", type=int, default=10, help="entries per query")
    p.add_argument("--exact", action="store_true", help="exact search over the key shards instead of the index")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--cache", type=Path, default=None, help="model cache folder")

    p = verbs.add_parser("import", help="a memory from clip-retrieval / LAION embeddings "
                                        "(img_emb/, text_emb/, metadata/; resumes)")
    p.add_argument("src", type=Path, help="the folder holding img_emb/, text_emb/, metadata/")
    p.add_argument("--out", type=Path, required=True, help="the memory folder (MEMDIR)")
    p.add_argument("--key-encoder", required=True, metavar="SPEC",
                   help="image encoder spec that made img_emb (recorded; its dim must match)")
    p.add_argument("--value-encoder", required=True, metavar="SPEC",
                   help="text encoder spec that made text_emb (recorded; its dim must match)")
    p.add_argument("--copy", action="store_true",
                   help="copy the .npy files into MEMDIR (default: the manifest points at them)")
    p.add_argument("--source-name", default=None,
                   help="every row's source (default: the source column, else SRC's name)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cache", type=Path, default=None, help="model cache folder")

    p = verbs.add_parser("export", help="write a memory in another tool's layout")
    p.add_argument("memdir", type=Path)
    p.add_argument("--format", choices=["clip-retrieval"], required=True,
                   help="clip-retrieval: img_emb/, text_emb/, metadata/ (as LAION publishes)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def load_run_config(args):
    from .config import load_preset, resolve

    overrides = list(args.overrides)
    if getattr(args, "recipe", None):
        overrides.append(f"recipe={args.recipe}")
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    if getattr(args, "seeds", None):
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise SystemExit(f"ravis: --seeds takes integers separated by commas, got {args.seeds!r}")
        overrides.append(f"seeds={seeds}")
    if args.verb == "demo":
        return load_preset(CONFIG_DIR / "demo.yaml", overrides)
    if getattr(args, "config", None):
        return load_preset(find_preset(args.config), overrides)
    if not getattr(args, "dataset", None):
        raise SystemExit("ravis: give a preset (-c FILE) or a dataset (--dataset SPEC)")
    tree = {"encoder": args.encoder, "text_encoder": args.text_encoder,
            "experiments": [{"name": Path(args.dataset.split(":", 1)[-1]).name or args.dataset,
                             "data": {"dataset": args.dataset, "class_depth": args.class_depth},
                             "memory": {"source": "train", "values": "caption"}}]}
    return resolve(tree, overrides)


def _serving_verbs(sub) -> None:
    """``ravis serve`` (prediction API and web page) and ``ravis report`` (HTML report)."""
    p = sub.add_parser("serve", help="serve a trained run: POST /predict, a web page, /metrics")
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    p.add_argument("--experiment", help="which experiment of the run (default: the first)")
    p.add_argument("--method", default="mam", help="trained method to serve (default mam)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted image file (MB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="largest accepted image (width x height); more is refused as a decompression bomb")
    p.add_argument("--index", default=None,
                   help="serve with this index spec instead of the run's, e.g. faiss:IVF256,Flat")
    p.add_argument("--search-param", dest="search_params", action="append", default=[], metavar="KEY=VALUE",
                   help="index search parameter, e.g. nprobe=16 (repeatable)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder for indexes built for serving (default $RAVIS_CACHE or ~/.cache/ravis)")
    _device(p)
    p.add_argument("--allow-edits", action="store_true",
                   help="accept POST /memory, DELETE /memory/ID and POST /memory/relabel (needs --edit-token-file)")
    p.add_argument("--edit-token-file", type=Path, default=None,
                   help="file holding the bearer token that edit requests must send")

    p = sub.add_parser("report", help="write a self-contained HTML report of a finished run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="HTML file (default RUN_DIR/report.html)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a model hub
    if getattr(args, "quiet", False):  # faiss's and ScaNN's C++ chatter too (and in Ray workers)
        os.environ.update(RAVIS_QUIET="1", TF_CPP_MIN_LOG_LEVEL="3", GLOG_minloglevel="3")
    from .errors import InputError
    from .io import FolderBusyError

    try:
        return _dispatch(args)
    except (InputError, FolderBusyError, OSError) as e:  # the input, the folder, the disk
        if getattr(args, "verbose", False):  # -v: the whole story, then the one line
            traceback.print_exc()
        print(f"ravis {args.verb}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        # Not one of ravis's checks: a library ravis called was given something it should
        # not have been, which is a bug in ravis and must not read as a problem with the input.
        traceback.print_exc()
        print(f"ravis {args.verb}: internal error: {e} (a bug in ravis, not in your input: "
              "please report it with the traceback above)", file=sys.stderr)
        return 1


def _one_line(e: Exception) -> str:
    """What went wrong and what to do, naming the path: a system error's bare message
    ("[Errno 13] Permission denied") says neither."""
    if not isinstance(e, OSError) or e.errno is None:
        return str(e)
    where = f" {e.filename}" if e.filename else ""
    # every output is written to a temporary name and renamed: what was finished is kept
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"the disk is full writing{where} ({e.strerror}); nothing finished was lost: "
                "free space and run the same command again to resume")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write or read{where} ({e.strerror}): give this user access to it, or "
                "choose another folder (--out, --cache or RAVIS_CACHE)")
    if e.errno == errno.ENOENT:
        return f"no such file or folder:{where or ' ' + str(e)}"
    return f"{e.strerror}:{where} (run with -v for the details)"


def _dispatch(args) -> int:
    from . import commands

    return getattr(commands, f"cmd_{args.verb}")(args)


if __name__ == "__main__":
    sys.exit(main())
