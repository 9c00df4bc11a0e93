"""Command line: ``python -m moebench [overrides]`` and ``-m`` sweeps (a Hydra app).

Before Hydra starts, every override (and every combination of a sweep) is
composed and validated once, so bad input fails in the first second with one
line naming the key, the bad value and the allowed values, and exit code 2,
instead of a traceback or a sweep that breaks on its tenth job.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moebench.config import RunConfig, register_schemas, validate
from moebench.errors import ConfigError, DataError
from moebench.routers import ROUTERS
from moebench.tasks import TASKS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXIT_BAD_INPUT = 2
# Hydra flags that change which config is loaded: then Hydra checks alone.
_CONFIG_FLAGS = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"}
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun",
                     "--shell-completion", "-sc", *_CONFIG_FLAGS}


def fail(message: str) -> None:
    print(f"moebench: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def user_overrides(argv: list[str]) -> list[str] | None:
    """The key=value arguments of ``argv``; None when Hydra must check alone."""
    overrides, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in _CONFIG_FLAGS or arg in ("--help", "-h", "--hydra-help"):
            return None
        elif arg in _FLAGS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Every combination of the sweep overrides (``router=top1,top2``)."""
    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_hydra_override():
            continue  # Hydra's own settings (launcher, sweep dir) are Hydra's to check
        if override.key_or_group in {p.name for p in CONF_DIR.iterdir() if p.is_dir()}:
            allowed = group_options(override.key_or_group)
            values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                      else [override.value()])
            for value in values:
                if value not in allowed:
                    raise ConfigError(override.key_or_group, value, allowed)
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except HydraException:
                continue  # an interval for a sweeper plugin: nothing to enumerate
            prefix = override.get_key_element()
            choices.append([f"{prefix}={v}" for v in values])
        else:
            choices.append([override.input_line])
    return [list(combo) for combo in itertools.product(*choices)]


def explain(error: Exception) -> str:
    """One line for a Hydra / OmegaConf composition error."""
    cause = error
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key, owner = cause.full_key, getattr(cause, "object_type", None)
        field_name = key.rsplit(".", 1)[-1]
        fields = {f.name: f.type for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else {}
        if field_name in fields:
            value = getattr(cause, "value", None)
            return str(ConfigError(key, value, f"a value of type {fields[field_name]}"))
        if fields:
            parent = key.rsplit(".", 1)[0] if "." in key else "<top level>"
            return f"{key!s} is not a known key; allowed keys of {parent}: {', '.join(fields)}"
        return f"{key}: {cause.msg.splitlines()[0]}"
    return str(error).strip().splitlines()[0]


def register_all() -> None:
    """Put every config schema (run, routers, tasks) into Hydra's ConfigStore."""
    register_schemas()
    ROUTERS.discover()
    TASKS.discover()


def load_config(*overrides: str) -> RunConfig:
    """The typed, validated RunConfig of ``python -m moebench <overrides>``."""
    register_all()
    with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
        cfg = OmegaConf.to_object(compose("config", overrides=list(overrides)))
    validate(cfg)
    return cfg


def preflight(argv: list[str]) -> None:
    """Compose and validate every run the command line asks for; exit 2 on bad input."""
    overrides = user_overrides(argv)
    if overrides is None:
        return
    try:
        for combo in expand_sweeps(overrides):
            load_config(*combo)
    except ConfigError as e:
        fail(str(e))
    except OverrideParseException as e:
        bad = next((a for a in overrides if "=" not in a), overrides[-1] if overrides else "")
        fail(f"malformed override {bad!r}: expected key=value, e.g. router=top2 or "
             f"trainer.max_steps=200 ({str(e).splitlines()[0]})")
    except (HydraException, OmegaConfBaseException) as e:
        fail(explain(e))


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def hydra_app(cfg: DictConfig) -> None:
    from moebench.run import run

    try:
        run(OmegaConf.to_object(cfg))
    except (ConfigError, DataError) as e:
        fail(str(e))


def main() -> None:
    register_all()
    preflight(sys.argv[1:])
    hydra_app()
