"""The command line tells bad input from a bug in ravis: one of ravis's own checks is one line
and exit status 2; a ValueError from a library ravis called is an internal error, with its
traceback and exit status 1."""

from pathlib import Path

import numpy as np
import pytest

from ravis.cli import pipeline
from ravis.cli import main
from ravis.errors import InputError
from ravis.methods import method

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def test_a_check_of_ravis_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "presets", lambda args: method("nope"))
    assert main(["presets"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("ravis presets: error: unknown method 'nope'; choose from ['linear'")


def test_a_library_value_error_is_an_internal_error(monkeypatch, capsys):
    def broken(args):
        return int(np.zeros(2) + np.zeros(3))  # shapes that never meet: a bug, not bad input

    monkeypatch.setattr(pipeline, "presets", broken)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "operands could not be broadcast" in err
    assert "ravis presets: internal error:" in err and "a bug in ravis" in err


def test_bad_search_parameter_is_input_error(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--search-param", "nprobe=many"]) == 2
    assert "--search-param 'nprobe=many': the value must be a number" in capsys.readouterr().err


# Bad input that reaches a library call (yaml, int(), float(), braceexpand, str.format,
# numpy's seeding) is checked first, so it reads as bad input and names what is wrong.
@pytest.mark.parametrize("args, says", [
    (["--set", "train.seed=2024-13-01"], "cannot read the value '2024-13-01'"),
    (["--set", "experiments.x.name=b"], "'x' is not an index into it"),
    (["--set", "experiments.3.name=b"], "'3' is not an index into it"),
    (["--set", "retrieval.budget=1..5G"], "retrieval.budget: cannot read a size from '1..5G'"),
    (["--set", "train.memory_rows_budget=eG"], "train.memory_rows_budget: cannot read a size"),
    (["--set", "memory.prompt=a {label} }"], "memory.prompt 'a {label} }' is not a format string"),
    (["--set", "data.split_seed=-1"], "data.split_seed must be >= 0"),
    (["--seeds", "0,-1"], "seeds must be >= 0"),
])
def test_bad_run_input_is_named(tmp_path, capsys, args, says):
    assert main(["run", "-c", str(TINY), "--out", str(tmp_path / "o"), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "internal error" not in err


def test_unbalanced_source_braces_are_named(tmp_path, capsys):
    assert main(["memory", "build", "--source", f"wds:{tmp_path}/{{0..9.tar", "--out", str(tmp_path / "m"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "{0..9.tar" in err and "internal error" not in err


def test_library_parsers_raise_input_errors(tmp_path):
    from ravis.index.build import _ivf_lists
    from ravis.index.scann_index import _options
    from ravis.io import load_json
    from ravis.sizes import parse_bytes

    assert _ivf_lists("IVF1024_HNSW32,PQ16x4fs") == 1024 and _ivf_lists("HNSW32,Flat") == 0
    with pytest.raises(InputError, match="IVF must be followed by its number of lists"):
        _ivf_lists("IVFx,Flat")
    with pytest.raises(InputError, match="needs a number"):
        _options("leaves=abc")
    with pytest.raises(InputError, match="cannot read a size"):
        parse_bytes("1..5G")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(InputError, match="bad.json: invalid JSON"):
        load_json(tmp_path / "bad.json")


def test_files_that_are_not_utf8_are_named(tmp_path, capsys):
    from ravis.data.lt_split import read_class_names

    bad = tmp_path / "names.txt"
    bad.write_bytes(b"cat\n\xffdog\n")
    with pytest.raises(InputError, match="names.txt: not a UTF-8 text file"):
        read_class_names(bad)
    assert main(["serve", str(tmp_path), "--allow-edits", "--edit-token-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "the edit token file is not UTF-8 text" in err and "internal error" not in err


def test_a_damaged_run_config_is_named(tmp_path):
    """RunFolder.open checks config.yaml's sha256 first; load_config, a library call of its own,
    names the file too."""
    from ravis.run_folder import RunFolder

    (tmp_path / "config.yaml").write_text("experiments: [unclosed\n")
    with pytest.raises(InputError, match="config.yaml: invalid YAML"):
        RunFolder(tmp_path).load_config()
    (tmp_path / "config.yaml").write_text("recipe: nonsense\n")
    with pytest.raises(InputError, match="config.yaml: unknown recipe"):
        RunFolder(tmp_path).load_config()
