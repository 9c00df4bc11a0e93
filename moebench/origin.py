"""Where a run record comes from: moebench's version and source commit, the
machine, the command line, and the data files it read.

The commit is moebench's own and nothing else's: ``git`` run beside an
installed package answers with whatever repository happens to contain it (a
virtual environment inside another project recorded that project's commit).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig

from moebench.tasks import TASKS
from moebench.tasks.data import SHA256
from moebench.tasks.lm import LMTask

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is what became tomllib
    import tomli as tomllib


def utc_now() -> str:
    """The time now, UTC, ISO 8601 (``2026-12-01T20:28:32.123456+00:00``)."""
    return datetime.now(timezone.utc).isoformat()


def moebench_version() -> str | None:
    """The installed distribution's version; None when moebench runs uninstalled."""
    try:
        return version("moebench")
    except PackageNotFoundError:
        return None


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _names_moebench(pyproject: Path) -> bool:
    try:
        return tomllib.loads(pyproject.read_text()).get("project", {}).get("name") == "moebench"
    except (OSError, tomllib.TOMLDecodeError):
        return False


def source_commit(root: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of moebench's source tree: only where ``root``, the folder
    that holds the package (a clone, or site-packages), is the top of a git
    repository whose pyproject.toml names the project moebench; else (None,
    None). Dirty: tracked files differ from the commit."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve() or not _names_moebench(root / "pyproject.toml"):
        return None, None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return _git(root, "rev-parse", "HEAD"), None if status is None else bool(status)


def cpu_model() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo (x86 Linux), else what the
    platform says (the architecture at least), else None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def hardware() -> dict:
    """The CPU, the cores this process may use, and the GPUs it sees."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": cpu_model(), "cpu_cores": cores or 1,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}


def command() -> dict:
    """The process's command line, and the Hydra job's overrides where a Hydra
    app runs it (None from the Python API). In a launcher's worker (joblib,
    Slurm) ``argv`` is the worker's: the overrides say what the job was."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    return {"argv": list(sys.argv), "overrides": overrides}


def data_files(tasks: Iterable[str]) -> dict[str, str]:
    """{path under the data root: sha256} of every file the tasks read. A task's
    corpus checks each file against :data:`~moebench.tasks.data.SHA256` as it
    loads it (``checked_file``) and stops on any other, so these are the bytes
    the run read, with nothing hashed again. The synthetic task reads none."""
    files = {}
    for name in tasks:
        cls = TASKS.get(name).cls
        if issubclass(cls, LMTask):
            files.update({rel: SHA256[rel] for rel in cls.corpus.paths})
    return dict(sorted(files.items()))
