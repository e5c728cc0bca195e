"""The README's code blocks run as written: every `ravis` command line parses with the CLI,
the ones that need no absent data run, and the Python snippet runs against a finished run."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from ravis.cli import build_parser

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def command_lines() -> list[str]:
    """The README's `ravis ...` lines (continuations joined, comments dropped)."""
    lines = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("ravis "):
                lines.append(line)
    return lines


def test_every_ravis_command_in_the_readme_parses():
    parser = build_parser()
    lines = command_lines()
    assert len(lines) > 25
    for line in lines:
        argv = shlex.split(line)[1:]
        if "..." in argv:  # a pattern ("ravis memory build ... --engine ray"), not a command
            continue
        argv = [a.strip("[]") for a in argv if not a.startswith("[")]
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"the README's command does not parse: {line} ({e})")


def test_the_tiny_stage_commands_run_as_written(tmp_path, ravis_cache):
    """The stage-by-stage commands on configs/tiny.yaml, run from a folder holding configs/."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    ran = 0
    for line in command_lines():
        if "configs/tiny.yaml" not in line and not line.startswith("ravis eval  runs/tiny"):
            continue
        done = subprocess.run(shlex.split(line) + ["--quiet"] * ("eval" not in line),
                              cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={"RAVIS_CACHE": str(ravis_cache), "PATH": str(Path(__import__("sys").executable).parent)
                                   + ":/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        ran += 1
    assert ran >= 5


def test_the_python_snippet_runs(tiny_run, tmp_path):
    from PIL import Image

    (snippet,) = [b for b in blocks("python") if "ravis.load" in b]
    Image.new("RGB", (32, 32), "white").save(tmp_path / "frog.png")
    code = (snippet.replace('"demo-out"', repr(str(tiny_run)))
            .replace('experiment="tuxpaint"', 'experiment="tiny-fmnist"')
            .replace('"frog.png"', repr(str(tmp_path / "frog.png"))))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["out"]["top5"] and scope["out"]["neighbors"]
