"""Provenance: every record says when, how and from what it ran, and the
commit it names is moebench's own or none."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import pytest

import moebench.record
from moebench.commands import app
from moebench.origin import data_files, source_commit
from moebench.record import REPO_ROOT, environment
from moebench.run import read_tasks, run

SHORT = ("trainer.max_steps=2", "trainer.batch_tokens=64", "trainer.eval_batches=1")


def git(cwd: Path, *args: str) -> str:
    # A throwaway identity and no signing: the machine's git settings must not matter.
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false",
                           *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def repository(path: Path, project: str | None) -> Path:
    """A git repository at ``path`` with one commit, holding a pyproject.toml
    that names ``project`` (none if None)."""
    path.mkdir(parents=True)
    git(path, "init", "-q")
    (path / "README").write_text("x\n")
    if project is not None:
        (path / "pyproject.toml").write_text(f'[project]\nname = "{project}"\nversion = "1"\n')
    git(path, "add", ".")
    git(path, "commit", "-qm", "first")
    return path


def test_a_short_run_records_when_how_and_on_what_it_ran(make_config):
    before = datetime.now().astimezone()
    record = json.loads(run(make_config(*SHORT, "task.oracle_baseline=false")).read_text())
    started, ended = (datetime.fromisoformat(record[key]) for key in ("started_at", "ended_at"))
    assert started.utcoffset().total_seconds() == 0  # UTC
    assert before <= started <= ended <= datetime.now().astimezone()
    assert 0 < record["wall_time_s"] and abs(record["wall_time_s"] - (ended - started).total_seconds()) < 1
    assert record["command"] == {"argv": sys.argv, "overrides": None}  # the Python API: no Hydra job
    assert record["data_files"] == {}  # the synthetic task reads no file
    env = record["env"]
    assert env["moebench"] == version("moebench")
    assert env["hardware"]["cpu_cores"] >= 1 and env["hardware"]["cpu_cores"] <= os.cpu_count()
    assert isinstance(env["hardware"]["cpu_model"], str) and isinstance(env["hardware"]["gpus"], list)
    assert env["git_sha"] == source_commit(REPO_ROOT)[0]


def test_the_command_line_app_records_its_overrides(monkeypatch, tmp_path):
    overrides = [*SHORT, "task.oracle_baseline=false", f"results_dir={tmp_path / 'runs'}"]
    monkeypatch.setattr(sys, "argv", ["moebench", *overrides, f"hydra.run.dir={tmp_path / 'out'}"])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        app.main()
    finally:  # undo Hydra's logging setup
        root.handlers[:] = handlers
        root.setLevel(level)
    (path,) = (tmp_path / "runs").glob("*.json")
    command = json.loads(path.read_text())["command"]
    assert command["overrides"] == overrides  # Hydra's own (hydra.run.dir) left out
    assert command["argv"][1:len(overrides) + 1] == overrides


def test_a_real_data_run_records_the_sha256_of_each_file_it_read(make_config, tmp_path):
    root = os.environ.get("MOEBENCH_DATA")
    if not root:
        pytest.skip("MOEBENCH_DATA is not set")
    cfg = make_config(*SHORT, "task=shakespeare_char", "model.block_size=32", f"data.root={root}",
                      f"data.cache_dir={tmp_path / 'cache'}")
    record = json.loads(run(cfg).read_text())
    rel = "tinyshakespeare/input.txt"
    assert record["data_files"] == {rel: hashlib.sha256((Path(root) / rel).read_bytes()).hexdigest()}


def test_a_transfer_run_records_the_files_of_both_its_tasks(make_config):
    tasks = read_tasks(make_config("+experiment=transfer"))
    assert tasks == ["shakespeare_char", "wikitext2"]
    assert list(data_files(tasks)) == ["tinyshakespeare/input.txt", "wikitext-2/test.txt",
                                       "wikitext-2/train.txt", "wikitext-2/valid.txt"]
    assert data_files(["synthetic"]) == {}


def test_the_commit_is_that_of_moebench_own_repository(tmp_path):
    clone = repository(tmp_path / "moebench", "moebench")
    assert source_commit(clone) == (git(clone, "rev-parse", "HEAD"), False)
    (clone / "README").write_text("changed\n")
    assert source_commit(clone) == (git(clone, "rev-parse", "HEAD"), True)


@pytest.mark.parametrize("where", ["inside another repository", "another project's top", "no repository"])
def test_no_commit_where_the_package_is_not_in_its_own_repository(tmp_path, monkeypatch, where):
    if where == "inside another repository":  # a virtual environment inside a project
        root = repository(tmp_path / "project", "moebench") / ".venv" / "lib" / "site-packages"
        root.mkdir(parents=True)
    elif where == "another project's top":  # the package copied into another project
        root = repository(tmp_path / "project", "project")
    else:
        root = tmp_path
    assert source_commit(root) == (None, None)
    monkeypatch.setattr(moebench.record, "REPO_ROOT", root)  # where the package would be
    env = environment("cpu")
    assert (env["git_sha"], env["git_dirty"]) == (None, None)


def test_this_checkout_records_its_head():
    try:
        head = git(REPO_ROOT, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("moebench is not running from a git checkout")
    assert source_commit(REPO_ROOT)[0] == head
