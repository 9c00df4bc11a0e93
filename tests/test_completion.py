"""Shell completion of the ``moebench`` console script (Hydra's bash plugin).

The hook that ``eval "$(moebench -sc install=bash)"`` installs asks the
program itself: ``moebench -sc query=bash`` with the line typed so far in
``COMP_LINE``, and offers what it prints.
"""

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

SCRIPTS = Path(sysconfig.get_path("scripts"))
MOEBENCH = SCRIPTS / "moebench"


@pytest.fixture(scope="module", autouse=True)
def console_script():
    assert MOEBENCH.is_file(), f"{MOEBENCH} is missing: install moebench (pip install -e .)"


def query(line: str) -> list[str]:
    """What the hook would offer after ``line`` (the cursor at its end)."""
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))}
    proc = subprocess.run([str(MOEBENCH), "-sc", "query=bash"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_completes_a_group_option():
    assert query("moebench router=t") == ["router=top1", "router=top1_frozen", "router=top2", "router=top_p"]


def test_completes_a_group_name():
    assert "task=" in query("moebench tas")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_installed_hook_completes_in_bash():
    """The hook, as a user's bash runs it: the function fills COMPREPLY."""
    script = """
        eval "$(moebench -sc install=bash)"
        COMP_LINE="moebench router=t"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=1
        hydra_bash_completion
        echo "${COMPREPLY[@]}"
        complete -p moebench
    """
    env = {**os.environ, "PATH": f"{SCRIPTS}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    offered, registration = proc.stdout.splitlines()
    assert offered.split() == ["router=top1", "router=top1_frozen", "router=top2", "router=top_p"]
    assert registration.endswith("-F hydra_bash_completion moebench")
