"""router.freeze: a router's learned parameters stay at their random
initialization while the rest of the model trains; routers with nothing to
freeze refuse it in one line; frozen runs are their own setups."""

import pytest
import torch
from omegaconf import OmegaConf

from moebench.compose import load_config
from moebench.config import TrainerConfig
from moebench.errors import ConfigError
from moebench.moe.experts import Experts
from moebench.record import config_hash
from moebench.results import setup_names
from moebench.routers import ROUTERS
from moebench.routers.base import Router, RouterContext
from moebench.train import make_optimizer, step_loss

FREEZABLE = [name for name in ROUTERS.names() if getattr(ROUTERS.get(name).cls, "learns_routing", False)]
# Routing by a fixed rule (hash, oracle), by centroids moved without gradients
# (kmeans), by product-key retrieval (peer, not a gate), by a gate that starts at
# zero (mumoe), or no routing at all.
NOTHING_TO_FREEZE = ["dense", "dense_total", "hash", "kmeans", "mumoe", "oracle", "peer"]


def parameters_of(model: torch.nn.Module, kind: type) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": p.detach().clone() for i, module in enumerate(model.modules())
            if isinstance(module, kind) for name, p in module.named_parameters()}


def trained(lm_model, random_tokens, router: str, freeze: bool) -> tuple[dict, dict]:
    """(router, expert) parameters before and after 2 training steps, as (before, after) pairs."""
    model = lm_model(router, freeze=freeze)
    before = parameters_of(model, Router), parameters_of(model, Experts)
    optimizer = make_optimizer(model, TrainerConfig(lr=1e-2))
    generator = torch.Generator().manual_seed(0)
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        step_loss(model, random_tokens, random_tokens.get_batch("train", 8, generator), step)[0].backward()
        optimizer.step()
    return (before[0], parameters_of(model, Router)), (before[1], parameters_of(model, Experts))


def test_the_routers_that_learn_a_gate_can_freeze_and_the_others_cannot():
    assert set(FREEZABLE).isdisjoint(NOTHING_TO_FREEZE)
    assert {"top1", "top2", "top_p", "noisy_topk", "expert_choice", "soft", "deepseek_moe"} <= set(FREEZABLE)


@pytest.mark.parametrize("router", FREEZABLE)
def test_a_frozen_router_keeps_its_initialization_while_the_experts_train(lm_model, random_tokens, router):
    (gate_before, gate_after), (experts_before, experts_after) = trained(lm_model, random_tokens, router, True)
    assert gate_before, "a router that can freeze has parameters to freeze"
    assert all(torch.equal(gate_before[n], gate_after[n]) for n in gate_before)  # bit for bit
    assert all(not torch.equal(experts_before[n], experts_after[n]) for n in experts_before)
    (gate_before, gate_after), _ = trained(lm_model, random_tokens, router, False)
    assert any(not torch.equal(gate_before[n], gate_after[n]) for n in gate_before)


def test_a_frozen_routers_losses_train_its_input_not_its_gate(lm_model):
    router = next(m for m in lm_model("top1", freeze=True).modules() if isinstance(m, Router))
    x_TD = torch.randn(32, 32, requires_grad=True)
    out = router(x_TD, RouterContext())
    out.aux_losses["balance"].backward()
    assert router.gate.weight.grad is None and x_TD.grad.abs().sum() > 0


@pytest.mark.parametrize("router", NOTHING_TO_FREEZE)
def test_a_router_with_nothing_to_freeze_refuses_in_one_line(router):
    with pytest.raises(ConfigError) as refused:
        load_config(f"router={router}", "router.freeze=true")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("router.freeze=True is not valid")
    assert f"false for router {router}" in message and "top1" in message and router not in FREEZABLE


def resolved(*overrides: str) -> dict:
    """The resolved config a run hashes (moebench/commands/sweep.py)."""
    return OmegaConf.to_container(OmegaConf.structured(load_config(*overrides)), resolve=True)


def test_frozen_runs_have_their_own_identity_and_earlier_runs_keep_theirs():
    plain, frozen = resolved("router=top1"), resolved("router=top1", "router.freeze=true")
    assert config_hash(plain) != config_hash(frozen)
    del plain["router"]["freeze"]  # a record from before the option
    assert config_hash(plain) == config_hash(resolved("router=top1"))


def test_frozen_setups_are_named_as_such():
    def record(seed: int, **router: object) -> dict:
        return {"task": "synthetic", "router": "top1", "seed": seed,
                "config": {"seed": seed, "router": {"name": "top1", **router}}}

    records = [record(0, freeze=False), record(1, freeze=False), record(0, freeze=True), record(2)]
    assert setup_names(records) == ["top1", "top1", "top1 (frozen)", "top1"]
