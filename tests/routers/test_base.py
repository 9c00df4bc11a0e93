"""BASE layers: the auction's assignment is exactly balanced and within T * eps
of the optimum that scipy's exact solver finds; the experts that take the
remainder rotate, so small routing groups starve no expert."""

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts
from moebench.routers.base import RouterContext
from moebench.routers.base_layers import (
    BaseLayerConfig, BaseLayerRouter, balanced_assignment, balanced_capacities,
)


def assign(scores_TE: torch.Tensor, capacity_E: torch.Tensor, eps: float) -> torch.Tensor:
    """The auction on one group."""
    return balanced_assignment(scores_TE[None], capacity_E[None], torch.tensor([eps]))[0][0]


def optimum(scores_TE: torch.Tensor, capacity_E: torch.Tensor) -> float:
    """The exact balanced optimum: expert e as c_e identical columns of a square problem."""
    E = scores_TE.shape[1]
    column_expert = torch.repeat_interleave(torch.arange(E), capacity_E)
    rows, cols = linear_sum_assignment(scores_TE[:, column_expert].double().numpy(), maximize=True)
    return float(scores_TE.double()[rows, column_expert[cols]].sum())


@pytest.mark.parametrize("T,E", [(24, 4), (64, 8), (30, 4), (7, 3), (3, 5), (100, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auction_is_balanced_and_within_eps_of_the_optimum(T, E, seed):
    g = torch.Generator().manual_seed(seed)
    scores_TE = torch.randn(T, E, generator=g) + torch.linspace(0, 2, E)  # all prefer the last experts
    eps = 1e-2
    capacity_E = balanced_capacities(T, E, first_extra=seed)[0]
    expert_T = assign(scores_TE, capacity_E, eps)
    counts_E = torch.bincount(expert_T, minlength=E)
    assert counts_E.tolist() == capacity_E.tolist()
    assert counts_E.max() - counts_E.min() <= 1  # T not divisible by E: off by one at most
    total = float(scores_TE.double()[torch.arange(T), expert_T].sum())
    best = optimum(scores_TE, capacity_E)
    assert best - T * eps - 1e-6 <= total <= best + 1e-6


def test_auction_is_exact_on_integer_scores_with_eps_below_one_over_t():
    g = torch.Generator().manual_seed(0)
    scores_TE = torch.randint(0, 5, (40, 4), generator=g).float()
    capacity_E = balanced_capacities(40, 4)[0]
    expert_T = assign(scores_TE, capacity_E, eps=0.9 / 40)
    assert float(scores_TE[torch.arange(40), expert_T].sum()) == optimum(scores_TE, capacity_E)


def test_the_remainder_goes_to_the_experts_from_first_extra_on():
    assert balanced_capacities(4, 8, first_extra=6).tolist() == [[1, 1, 0, 0, 0, 0, 1, 1]]
    assert balanced_capacities(10, 4, first_extra=3).tolist() == [[3, 2, 2, 3]]
    assert balanced_capacities(8, 4, first_extra=3).tolist() == [[2, 2, 2, 2]]
    # Group after group, the extra tokens go to the next experts in turn.
    assert balanced_capacities(3, 4, first_extra=2, num_groups=3).tolist() == [
        [1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]]


def test_auctions_batched_over_groups_equal_each_group_alone():
    """One batched auction over groups of different preferences (and one with
    a single expert to fill) gives each group the assignment it gets alone."""
    g = torch.Generator().manual_seed(0)
    G, T, E = 5, 12, 4
    scores_GTE = torch.randn(G, T, E, generator=g) * torch.arange(1, G + 1)[:, None, None]
    capacity_GE = balanced_capacities(T, E, first_extra=1, num_groups=G)
    capacity_GE[-1] = torch.tensor([0, T, 0, 0])
    eps_G = torch.full((G,), 1e-3)
    batched_GT, _ = balanced_assignment(scores_GTE, capacity_GE, eps_G)
    for g_ in range(G):
        assert torch.equal(batched_GT[g_], assign(scores_GTE[g_], capacity_GE[g_], 1e-3))
        assert torch.bincount(batched_GT[g_], minlength=E).tolist() == capacity_GE[g_].tolist()


def test_position_groups_smaller_than_e_starve_no_expert_in_training():
    """B = 4 tokens per position group and E = 8 (the CPU tier): every token
    prefers expert 7, yet over the step every expert gets its B * L / E tokens
    and a gradient; with the first T mod E experts always taking the remainder,
    experts 4-7 got nothing."""
    torch.manual_seed(0)
    E, D, B, L = 8, 16, 4, 16
    router = BaseLayerRouter(BaseLayerConfig(name="base"), D, E, None)
    block = MoEBlock(router, Experts(E, D, 16, "gelu"), k=1, capacity_factor=1.25, eval_capacity_factor=2.0,
                     dropless=False, drop_policy="position", routing_groups="position").train()
    c7 = router.gate.weight[7].detach()
    x_TD = torch.randn(B * L, D) + 5 * c7 / c7.norm()
    y_TD, stats = block(x_TD, RouterContext(batch_shape=(B, L)))
    assert stats.kept_E.tolist() == [B * L // E] * E and stats.dropped == 0
    y_TD.square().sum().backward()
    assert all(block.experts.w_in_EDH.grad[e].abs().sum() > 0 for e in range(E))


def test_router_balances_in_training_and_is_greedy_at_evaluation():
    torch.manual_seed(0)
    router = BaseLayerRouter(BaseLayerConfig(name="base"), 16, 4, None)
    x = torch.randn(64, 16) + 3 * router.gate.weight[0] / router.gate.weight[0].norm()  # most like expert 0
    out = router.train()(x, RouterContext())
    assert torch.bincount(out.routing.expert_idx_A, minlength=4).tolist() == [16] * 4
    assert out.routing.respects_capacity
    affinity_TE = x @ router.gate.weight.t()
    a_A = affinity_TE[out.routing.token_idx_A, out.routing.expert_idx_A]
    torch.testing.assert_close(out.routing.weight_A, torch.sigmoid(a_A))  # sigmoid(x . c_e) gate
    out = router.eval()(x, RouterContext())
    assert torch.equal(out.routing.expert_idx_A, affinity_TE.argmax(-1))


def test_evaluation_is_greedy_without_capacity():
    """The paper's test-time routing: skewed tokens all reach their best expert."""
    torch.manual_seed(0)
    router = BaseLayerRouter(BaseLayerConfig(name="base"), 16, 4, None)
    block = MoEBlock(router, Experts(4, 16, 32, "gelu"), k=1, capacity_factor=1.0,
                     eval_capacity_factor=1.0, dropless=False, drop_policy="position").eval()
    x = torch.randn(64, 16) + 3 * router.gate.weight[0] / router.gate.weight[0].norm()
    _, stats = block(x, RouterContext())
    assert stats.kept_E.max() > 16  # over the capacity ceil(1.0 * 64 / 4) = 16 ...
    assert stats.dropped == 0 and torch.all(stats.experts_per_token_T == 1)  # ... yet nothing dropped
