"""``moebench --help``: moebench's own page (conf/hydra/help/moebench.yaml).

Its option lists are written out, so these tests hold them to conf/: every
user-facing config group with exactly its options, every console script,
examples whose choices exist, and none of the internal schema/* groups.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from moebench.commands.app import parse_checked
from moebench.compose import CONF_DIR, group_options, hydra_context

REPO = Path(__file__).resolve().parent.parent
# Groups under conf/ that are not chosen on the command line.
INTERNAL_GROUPS = {"hydra/help"}
# Options Hydra and its plugins add to a group of conf/ (Hydra's basic
# launcher, the joblib launcher: a dependency).
PLUGIN_OPTIONS = {"hydra/launcher": {"basic", "joblib"}}


@pytest.fixture(scope="module")
def help_page() -> str:
    """The page of a command line that chooses a router: one subprocess for all tests."""
    proc = subprocess.run([sys.executable, "-m", "moebench", "router=top2", "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def section(page: str, title: str) -> list[str]:
    """The lines of the section ``== <title>...`` up to the next blank line."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"== {title}"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start + 1:end]


def listed_groups(page: str) -> dict[str, set[str]]:
    """{group: options} from the config groups section: a line ``group [...]: ...``
    (``+group`` for one added with +), then indented lines of options."""
    groups: dict[str, set[str]] = {}
    for line in section(page, "Config groups"):
        if not line.startswith(" "):
            group = re.match(r"\+?([\w/]+)", line).group(1)
            groups[group] = set()
        else:
            groups[group] |= {name.strip() for name in line.split(",") if name.strip()}
    return groups


def conf_groups() -> set[str]:
    """Every config group of conf/: a folder holding YAML files."""
    return {p.parent.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml")} - {"."}


def test_lists_every_user_facing_group_with_exactly_its_options(help_page):
    groups = listed_groups(help_page)
    assert groups.keys() == conf_groups() - INTERNAL_GROUPS
    for group, options in groups.items():
        assert options == set(group_options(group)) | PLUGIN_OPTIONS.get(group, set()), group


def test_plugin_options_are_offered_by_hydra():
    with hydra_context() as app:
        for group, options in PLUGIN_OPTIONS.items():
            assert options <= set(app.config_loader.get_group_options(group))


def test_shows_the_chosen_options_and_their_config(help_page):
    assert "router [top2]:" in help_page and "task [synthetic]:" in help_page
    assert "hydra/launcher [basic]:" in help_page
    config = help_page.split("== Config:", 1)[1]
    assert "router:\n  name: top2\n" in config and "task:\n  name: synthetic\n" in config


def test_hides_the_internal_schema_groups(help_page):
    assert "schema/" not in help_page


def test_lists_every_console_script_once(help_page):
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    listed = [line.split()[0] for line in section(help_page, "Commands")]
    assert sorted(listed) == sorted(scripts)


def test_examples_choose_existing_options(help_page):
    examples = [line.split("  ")[0].split() for line in section(help_page, "Examples")]
    assert ["moebench", "router=top2", "task=shakespeare_char"] in examples
    assert any("-m" in e and "+experiment=leaderboard" in e for e in examples)
    with hydra_context() as app:
        for example in examples:
            assert example[0] == "moebench"
            # A choice that does not exist raises ConfigError.
            parse_checked([arg for arg in example[1:] if not arg.startswith("-")], app.config_loader)
