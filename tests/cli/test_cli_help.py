"""The command line reads like a finished tool: plain help text, every option explained with
its default, verbs offering only what they use, presets found by name."""

import argparse

import pytest

from ravis.cli import build_parser, main
from ravis.cli._arguments import HelpFormatter
from ravis.config import find_preset, preset_names


def parsers(parser=None, name="ravis"):
    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
        return
    for verb, child in subs[0].choices.items():
        yield from parsers(child, f"{name} {verb}")


def test_every_option_has_help_and_shows_its_default():
    missing, silent = [], []
    for name, parser in parsers():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {action.option_strings[-1]}")
            shown = HelpFormatter("x")._get_help_string(action) or ""
            if action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in shown:
                silent.append(f"{name} {action.option_strings[-1]}")
    assert not missing, f"options without help: {missing}"
    assert not silent, f"defaults not shown: {silent}"


def test_help_is_plain_text(capsys):
    for argv in (["--help"], ["memory", "--help"], ["run", "--help"], ["memory", "edit", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "``" not in text and ":mod:" not in text and ":class:" not in text, argv


def test_stage_verbs_offer_only_what_they_use():
    verbs = dict(parsers())
    for verb in ("ravis embed", "ravis knn", "ravis index"):
        options = {o for a in verbs[verb]._actions for o in a.option_strings}
        assert "--recipe" not in options, verb
    for verb in ("ravis run", "ravis train", "ravis demo"):
        assert "--recipe" in {o for a in verbs[verb]._actions for o in a.option_strings}


def test_presets_by_name_and_listed(capsys, tmp_path):
    assert set(preset_names()) >= {"demo", "tiny", "imagenet_lt", "places_lt", "webvision", "inat2021_mini"}
    assert find_preset("tiny").name == "tiny.yaml" and find_preset("tiny.yaml").name == "tiny.yaml"
    with pytest.raises(FileNotFoundError, match="no preset 'nope'.*tiny"):
        find_preset("nope")
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "imagenet_lt" in out and "tiny" in out and "inat2021_mini_ft" in out
    lines = out.splitlines()
    # the descriptions start in one column, after the longest name and two spaces
    column = max(len(line.split()[0]) for line in lines) + 2
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines)


def test_quiet_silences_faiss(tmp_path, capfd, monkeypatch):
    """faiss's C++ prints ("resizing ...", "IO_FLAG_ONDISK_SAME_DIR ...") go with --quiet."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from bench_verify import make_memory

    make_memory(tmp_path / "m", 3000, 1000, 32, 8)
    for name in ("RAVIS_QUIET", "TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel"):
        monkeypatch.setenv(name, "")  # restored after the test: --quiet sets them for the process
    assert main(["memory", "index", str(tmp_path / "m"), "--factory", "IVF16,Flat"]) == 0
    loud = capfd.readouterr()
    assert "resizing" in loud.out + loud.err  # what there is to silence
    import shutil

    shutil.rmtree(tmp_path / "m" / "index")
    assert main(["memory", "index", str(tmp_path / "m"), "--factory", "IVF16,Flat", "--quiet"]) == 0
    quiet = capfd.readouterr()
    assert "resizing" not in quiet.out + quiet.err and "IO_FLAG" not in quiet.out + quiet.err
    assert "IVF16,Flat over 3000 vectors" in quiet.out  # ravis's own summary stays


def test_every_argument_of_every_verb_has_help():
    """Positionals and verb lists too (``ravis memory VERB``), not only the options."""
    missing, todo = [], [("ravis", build_parser())]
    while todo:
        name, parser = todo.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {verb}", child) for verb, child in action.choices.items()]
            if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"arguments without help: {missing}"
