"""S-BASE: the Sinkhorn plan's marginals match their targets within tolerance."""

import pytest
import torch

from moebench.errors import ConfigError
from moebench.routers.base import RouterContext
from moebench.routers.sbase import SBaseConfig, SBaseRouter, sinkhorn_plan


@pytest.mark.parametrize("tol", [1e-1, 1e-2, 1e-4])
def test_plan_marginals_match_targets(tol):
    g = torch.Generator().manual_seed(0)
    T, E = 96, 8
    logits_TE = 2 * torch.randn(T, E, generator=g) + torch.linspace(0, 3, E)  # skewed to the last expert
    plan_TE = sinkhorn_plan(logits_TE[None], max_iters=10_000, tol=tol)[0][0].exp()
    torch.testing.assert_close(plan_TE.sum(1), torch.ones(T))  # one unit per token
    assert ((plan_TE.sum(0) / (T / E) - 1).abs().max()) <= tol  # an equal share per expert


def test_training_routes_by_the_balanced_plan_evaluation_by_the_logits():
    torch.manual_seed(0)
    router = SBaseRouter(SBaseConfig(name="sbase", sinkhorn_iters=200, sinkhorn_tol=1e-3), 16, 4, None)
    x = torch.randn(256, 16) + 3 * router.gate.weight[0] / router.gate.weight[0].norm()
    logits_TE = x @ router.gate.weight.t()
    greedy_E = torch.bincount(logits_TE.argmax(-1), minlength=4)
    train = router.train()(x, RouterContext()).routing
    balanced_E = torch.bincount(train.expert_idx_A, minlength=4)
    assert greedy_E.max() > 128 and balanced_E.max() < 80  # 64 each would be perfect
    torch.testing.assert_close(train.weight_A, torch.sigmoid(logits_TE[train.token_idx_A, train.expert_idx_A]))
    evaluation = router.eval()(x, RouterContext()).routing
    assert torch.equal(evaluation.expert_idx_A, logits_TE.argmax(-1))


@pytest.mark.parametrize("k,gate,expected", [
    (1, {}, "sigmoid"), (2, {}, "softmax"), (2, {"gate": "sigmoid"}, "sigmoid"), (1, {"gate": "softmax"}, "softmax"),
])
def test_gate_is_sigmoid_for_top1_and_softmax_for_topk(k, gate, expected):
    """By default as Megatron-LM's sinkhorn_load_balancing: sigmoid for k = 1,
    softmax over all E logits for k > 1, the chosen experts' values not
    renormalized; ``gate`` forces one."""
    torch.manual_seed(0)
    router = SBaseRouter(SBaseConfig(name="sbase", k=k, **gate), 16, 4, None)
    x = torch.randn(32, 16)
    logits_TE = x @ router.gate.weight.t()
    gate_TE = torch.sigmoid(logits_TE) if expected == "sigmoid" else torch.softmax(logits_TE, -1)
    for mode in (router.train(), router.eval()):
        routing = mode(x, RouterContext()).routing
        assert routing.expert_idx_A.numel() == 32 * k
        torch.testing.assert_close(routing.weight_A, gate_TE[routing.token_idx_A, routing.expert_idx_A])


def test_unknown_gate_is_refused():
    with pytest.raises(ConfigError):
        SBaseConfig(name="sbase", gate="relu")
