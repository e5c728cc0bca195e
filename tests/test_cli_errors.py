"""The command line tells bad input from a bug in ravis: one of ravis's own checks is one line
and exit status 2; a ValueError from a library ravis called is an internal error, with its
traceback and exit status 1."""

import re
from pathlib import Path

import numpy as np

from ravis import commands
from ravis.cli import main
from ravis.errors import InputError
from ravis.methods import method

SRC = Path(__file__).resolve().parents[1] / "src" / "ravis"


def test_a_check_of_ravis_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(commands, "cmd_presets", lambda args: method("nope"))
    assert main(["presets"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["ravis presets: error: unknown method 'nope'; choose from "
                                        "['linear', 'mlp', 'mean_knn', 'mam', 'rac', 'knn_vote']"]


def test_a_library_value_error_is_an_internal_error(monkeypatch, capsys):
    def broken(args):
        return int(np.zeros(2) + np.zeros(3))  # shapes that never meet: a bug, not bad input

    monkeypatch.setattr(commands, "cmd_presets", broken)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "operands could not be broadcast" in err
    assert "ravis presets: internal error:" in err and "a bug in ravis" in err


def test_bad_search_parameter_is_input_error(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--search-param", "nprobe=many"]) == 2
    assert "--search-param 'nprobe=many': the value must be a number" in capsys.readouterr().err


def test_ravis_raises_its_own_error_for_its_checks():
    """A bare ``raise ValueError`` in ravis would read as a bug on the command line."""
    found = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "errors.py"
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"raise ValueError\b|class \w+\(ValueError\)", line)]
    assert not found, f"raise InputError (ravis.errors) instead: {found}"
    assert issubclass(InputError, ValueError)  # library callers still catch ValueError
