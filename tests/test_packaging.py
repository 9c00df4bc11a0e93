"""The wheel works anywhere: built, installed into a fresh virtual environment
and run from a folder outside the repository, where nothing of the checkout
can stand in for what the wheel forgot to ship (configs, console scripts).

The fresh environment reuses this one's dependencies (torch, hydra, ...)
through a .pth file listing this environment's site-packages: a folder listed
in a .pth joins sys.path without its own .pth files being processed, so the
editable install of moebench there stays inactive (checked below).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What the build reads: copied out, so that building leaves no build/ or
# *.egg-info in the checkout that others work in.
BUILD_INPUTS = ("pyproject.toml", "README.md", "moebench")


def build_wheel(out: Path) -> Path:
    """``pip wheel`` of a copy of the source tree, with this environment's
    setuptools (no build isolation, so nothing is downloaded)."""
    source = out / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", str(source), "-w", str(out / "dist")], check=True, timeout=300)
    (wheel,) = (out / "dist").glob("moebench-*.whl")
    return wheel


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A new virtual environment holding the wheel, seeing this one's site-packages."""
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_path(key) for key in ("purelib", "platlib"))
    (Path(site_packages) / "dependencies.pth").write_text("\n".join(ours) + "\n")
    # This environment's pip (seen through the .pth); --ignore-installed: it
    # must not touch the editable moebench it also sees.
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--quiet",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=300)
    return where / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the fresh environment's bin folder, a working folder outside the repository)."""
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None:
        pytest.skip("building the wheel needs pip and setuptools in this environment")
    root = tmp_path_factory.mktemp("packaging")
    assert REPO not in root.parents
    wheel = build_wheel(root)
    bin_dir = fresh_venv(root / "venv", wheel)
    work = root / "work"
    work.mkdir()
    return wheel, bin_dir, work


def run(bin_dir: Path, work: Path, *command: str) -> subprocess.CompletedProcess:
    """A command of the fresh environment, started in ``work``, as a user would."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", XDG_CACHE_HOME=str(work / "cache"))
    proc = subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}: {proc.stderr}"
    return proc


def test_wheel_ships_every_file_of_the_package(installed):
    """Every file of the package's source tree (configs, schemas), as built."""
    wheel, _, _ = installed
    built = wheel.parent.parent / "source"
    sources = {p.relative_to(built).as_posix() for p in (built / "moebench").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert "moebench/conf/config.yaml" in sources
    assert sources - set(zipfile.ZipFile(wheel).namelist()) == set()


def test_imports_moebench_from_the_wheel(installed):
    _, bin_dir, work = installed
    location = run(bin_dir, work, "python", "-c", "import moebench; print(moebench.__file__)").stdout
    assert Path(location.strip()).is_relative_to(bin_dir.parent)


def test_runs_from_outside_the_repository(installed):
    _, bin_dir, work = installed
    run(bin_dir, work, "moebench", "trainer.max_steps=2", f"results_dir={work}/runs")
    (record,) = (work / "runs").glob("*.json")
    assert json.loads(record.read_text())["status"] == "completed"


# Every console script's --help in one interpreter: a process each would
# import torch eight times (seconds each on a busy machine). The scripts
# themselves are pip's two-line wrappers of these entry points; moebench's
# is run above.
HELP_OF_EVERY_SCRIPT = """
import sys
from importlib.metadata import distribution
for script in distribution("moebench").entry_points.select(group="console_scripts"):
    sys.argv = [script.name, "--help"]
    try:
        script.load()()
    except SystemExit as stop:
        assert stop.code in (0, None), (script.name, stop.code)
    print("== --help done:", script.name)
"""


def test_help_pages(installed):
    wheel, bin_dir, work = installed
    assert "== Config groups" in run(bin_dir, work, "python", "-m", "moebench", "--help").stdout
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        lines = archive.read(entry_points).decode().splitlines()
    scripts = [line.split("=")[0].strip() for line in lines[lines.index("[console_scripts]") + 1:] if "=" in line]
    assert "moebench-leaderboard" in scripts and all((bin_dir / script).is_file() for script in scripts)
    pages = run(bin_dir, work, "python", "-c", HELP_OF_EVERY_SCRIPT).stdout
    assert {line.split()[-1] for line in pages.splitlines() if line.startswith("== --help done:")} == set(scripts)
    assert "== Config groups" in pages  # moebench's own help page
