"""Every router x task config composes and validates; the registry matches moebench/conf/."""

import pytest

from moebench.routers import ROUTERS
from moebench.tasks import TASKS
from moebench.compose import group_options, load_config
from moebench.errors import ConfigError


# Router configs that are a registered router with options set, named for the
# leaderboard's tables: option -> (router, the options).
VARIANTS = {"top1_frozen": ("top1", {"freeze": True})}


def test_registries_match_the_config_files():
    assert ROUTERS.names() == sorted(set(group_options("router")) - set(VARIANTS))
    assert TASKS.names() == group_options("task")


@pytest.mark.parametrize("option, expected", VARIANTS.items())
def test_a_variant_is_its_router_with_its_options(option, expected):
    router, options = expected
    variant, plain = load_config(f"router={option}").router, load_config(f"router={router}").router
    assert variant.name == router
    assert variant == type(plain)(**{**vars(plain), **options})


@pytest.mark.parametrize("router", group_options("router"))
@pytest.mark.parametrize("task", group_options("task"))
def test_every_router_task_pair_composes(router, task):
    option, (router, _) = router, VARIANTS.get(router, (router, {}))
    leaky = ROUTERS.get(router).cls.uses_other_tokens and TASKS.get(task).cls.causal
    if leaky:  # refused unless run causal-safe (tests/routers/test_causality.py)
        with pytest.raises(ConfigError, match="moe.routing_groups"):
            load_config(f"router={option}", f"task={task}")
    groups = ["moe.routing_groups=position"] if leaky else []
    cfg = load_config(f"router={option}", f"task={task}", *groups)
    assert (cfg.router.name, cfg.task.name) == (router, task)
    assert type(cfg.router) is ROUTERS.get(router).config_cls
    assert type(cfg.task) is TASKS.get(task).config_cls
