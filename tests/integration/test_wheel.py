"""`pip install` of the built wheel (not editable) gives a working `ravis` from any folder: the
presets and the page's static files ship in the package."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_wheel_installs_and_runs_from_any_folder(tmp_path, ravis_cache):
    dist = tmp_path / "dist"
    import importlib.util

    # with setuptools here, build offline; else pip fetches the build backend from the registry
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
                    "--quiet", "-w", str(dist), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("ravis-*.whl")
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, faiss, ...) come from this environment, ravis itself from the wheel
    (site / "_ravis_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--quiet", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(RAVIS_CACHE=str(ravis_cache), HF_HUB_OFFLINE="1")

    def ravis(*argv):
        return subprocess.run([str(env_dir / "bin" / "ravis"), *argv], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([str(python), "-c", "import ravis; print(ravis.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where  # the installed copy, not the checkout
    assert ravis("--help").returncode == 0
    listed = ravis("presets")
    assert listed.returncode == 0 and "imagenet_lt" in listed.stdout and "tiny" in listed.stdout
    done = ravis("run", "-c", "tiny", "--out", "run", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (elsewhere / "run" / "complete.json").is_file()
    assert (site / "ravis" / "serve" / "static" / "index.html").is_file()
