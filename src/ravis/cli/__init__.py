"""``ravis <verb>``: a thin command line over the library.

One module per verb group, each verb's parser beside the function that runs it:
:mod:`.pipeline` (demo, run, train; embed, index, knn, one stage each, cached and
resumable; presets), :mod:`.runs` (eval, report, predict, serve: a finished run folder) and
:mod:`.memory` (``ravis memory build|add|verify|index|search|edit|compact|import|export``,
sharded web-scale memories). Verbs raise; :func:`main` prints the error and chooses the exit
status. ``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback

from . import memory, pipeline, runs
from ._arguments import HelpFormatter

DESCRIPTION = ("ravis: image recognition that retrieves from a large image-text memory (Iscen, "
               "Fathi, Schmid, CVPR 2023). Run `ravis VERB --help` for a verb's options, "
               "`ravis presets` for the presets that -c takes by name.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ravis", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB",
                                help="what to do (ravis VERB --help for its options)")
    pipeline.add_verbs(sub)
    runs.add_verbs(sub)
    memory.add_verbs(sub)
    _verbose_everywhere(parser)
    return parser


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """Gives every verb that lacks one a -v: an error is one line, -v adds its traceback."""
    parser.formatter_class = HelpFormatter  # and every default shown after its help
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if "--verbose" not in parser._option_string_actions:
            parser.add_argument("-v", "--verbose", action="store_true",
                                help="log more, and print the full traceback of an error")
        return
    for child in subs[0].choices.values():
        _verbose_everywhere(child)


def main(argv: list[str] | None = None) -> int:
    """Runs one verb; returns the exit status: 0 done, 2 bad input (one line naming the
    problem), 1 a bug in ravis (with its traceback)."""
    args = build_parser().parse_args(runs.run_alias(list(sys.argv[1:] if argv is None else argv)))
    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a model hub
    if getattr(args, "quiet", False):  # faiss's and ScaNN's C++ chatter too (and in Ray workers)
        os.environ.update(RAVIS_QUIET="1", TF_CPP_MIN_LOG_LEVEL="3", GLOG_minloglevel="3")
    from ..errors import InputError
    from ..io import FolderBusyError

    verb = " ".join(v for v in (args.verb, getattr(args, "memory_verb", None)) if v)
    try:
        args.handler(args)
        return 0
    except (InputError, FolderBusyError, OSError) as e:  # the input, the folder, the disk
        if getattr(args, "verbose", False):  # -v: the whole story, then the one line
            traceback.print_exc()
        print(f"ravis {verb}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        # Not one of ravis's checks: a library ravis called was given something it should
        # not have been, which is a bug in ravis and must not read as a problem with the input.
        traceback.print_exc()
        print(f"ravis {verb}: internal error: {e} (a bug in ravis, not in your input: "
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


__all__ = ["build_parser", "main"]
