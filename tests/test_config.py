"""Every router x task config composes and validates; the registry matches moebench/conf/."""

import pytest

from moebench.routers import ROUTERS
from moebench.tasks import TASKS
from moebench.compose import group_options, load_config
from moebench.errors import ConfigError


def test_registries_match_the_config_files():
    assert ROUTERS.names() == group_options("router")
    assert TASKS.names() == group_options("task")


@pytest.mark.parametrize("router", group_options("router"))
@pytest.mark.parametrize("task", group_options("task"))
def test_every_router_task_pair_composes(router, task):
    leaky = ROUTERS.get(router).cls.uses_other_tokens and TASKS.get(task).cls.causal
    if leaky:  # refused unless run causal-safe (tests/routers/test_causality.py)
        with pytest.raises(ConfigError, match="moe.routing_groups"):
            load_config(f"router={router}", f"task={task}")
    groups = ["moe.routing_groups=position"] if leaky else []
    cfg = load_config(f"router={router}", f"task={task}", *groups)
    assert (cfg.router.name, cfg.task.name) == (router, task)
    assert type(cfg.router) is ROUTERS.get(router).config_cls
    assert type(cfg.task) is TASKS.get(task).config_cls
