"""Composing a run's config with Hydra from the configs shipped in the package
(``moebench/conf``, Hydra's ``pkg://moebench.conf``): the schemas registered,
the resolvers, one-line explanations of composition errors, and
:func:`load_config`, the typed and validated RunConfig of an override list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.hydra import Hydra
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moebench.config import RunConfig, register_schemas
from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.tasks import TASKS
from moebench.validation import validate

CONF_MODULE = "moebench.conf"
CONF_DIR = Path(__file__).resolve().parent / "conf"


def position_group_tokens(routing_groups: str, task: str, batch_tokens: int,
                          block_size: int | None) -> int | None:
    """``${position_group_tokens:...}`` in conf/: the tokens of one position
    group, B = batch_tokens / block_size, on a sequence task whose tokens are
    routed by position (``moe.routing_groups=position``, or ``auto`` on a
    causal task); else None. Soft MoE sizes its slots by it
    (conf/router/soft.yaml), and compares tokens, so ``auto`` groups it by
    position exactly on the causal tasks (moe/grouping.py)."""
    by_position = routing_groups == "position" or (routing_groups == "auto" and TASKS.get(task).cls.causal)
    if not by_position or block_size is None:
        return None
    return max(1, batch_tokens // block_size)


# At import: Hydra's joblib workers compose their job's config in a new
# process, which imports this module for the task function.
OmegaConf.register_new_resolver("position_group_tokens", position_group_tokens, replace=True)


def group_options(group: str) -> list[str]:
    """The option names of a config group (its YAML files)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def explain(error: Exception) -> str:
    """One line for a Hydra / OmegaConf composition error."""
    cause = error
    # Hydra raises some errors while handling OmegaConf's (as __context__, not __cause__).
    while not isinstance(cause, OmegaConfBaseException) and (cause.__cause__ or cause.__context__):
        cause = cause.__cause__ or cause.__context__
    # "In 'experiment/NAME': ..." says which config file holds the bad key.
    where = str(error).split(": ", 1)[0] + ": " if str(error).startswith("In '") else ""
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key, owner = cause.full_key, getattr(cause, "object_type", None)
        field_name = key.rsplit(".", 1)[-1]
        fields = {f.name: f.type for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else {}
        if field_name in fields:
            value = getattr(cause, "value", None)
            return where + str(ConfigError(key, value, f"a value of type {fields[field_name]}"))
        if fields:
            parent = key.rsplit(".", 1)[0] if "." in key else "<top level>"
            return f"{where}{key!s} is not a known key; allowed keys of {parent}: {', '.join(fields)}"
        return f"{where}{key}: {cause.msg.splitlines()[0]}"
    return str(error).strip().splitlines()[0]


def register_all() -> None:
    """Put every config schema (run, routers, tasks) into Hydra's ConfigStore."""
    register_schemas()
    ROUTERS.discover()
    TASKS.discover()


@contextmanager
def hydra_context() -> Iterator[Hydra]:
    """Hydra initialized on the packaged configs, with every schema registered."""
    register_all()
    with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
        yield GlobalHydra.instance().hydra


def load_config(*overrides: str) -> RunConfig:
    """The typed, validated RunConfig of ``python -m moebench <overrides>``."""
    with hydra_context():
        cfg = OmegaConf.to_object(compose("config", overrides=list(overrides)))
    validate(cfg)
    return cfg
