"""BASE layers: the auction's assignment is exactly balanced and within T * eps
of the optimum that scipy's exact solver finds."""

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts
from moebench.routers.base import RouterContext
from moebench.routers.base_layers import (
    BaseLayerConfig, BaseLayerRouter, balanced_assignment, balanced_capacities,
)


def optimum(scores_TE: torch.Tensor) -> float:
    """The exact balanced optimum: expert e as c_e identical columns of a square problem."""
    T, E = scores_TE.shape
    column_expert = torch.repeat_interleave(torch.arange(E), balanced_capacities(T, E))
    rows, cols = linear_sum_assignment(scores_TE[:, column_expert].double().numpy(), maximize=True)
    return float(scores_TE.double()[rows, column_expert[cols]].sum())


@pytest.mark.parametrize("T,E", [(24, 4), (64, 8), (30, 4), (7, 3), (3, 5), (100, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auction_is_balanced_and_within_eps_of_the_optimum(T, E, seed):
    g = torch.Generator().manual_seed(seed)
    scores_TE = torch.randn(T, E, generator=g) + torch.linspace(0, 2, E)  # all prefer the last experts
    eps = 1e-2
    expert_T = balanced_assignment(scores_TE, eps)
    counts_E = torch.bincount(expert_T, minlength=E)
    assert counts_E.tolist() == balanced_capacities(T, E).tolist()
    assert counts_E.max() - counts_E.min() <= 1  # T not divisible by E: off by one at most
    total = float(scores_TE.double()[torch.arange(T), expert_T].sum())
    assert optimum(scores_TE) - T * eps - 1e-6 <= total <= optimum(scores_TE) + 1e-6


def test_auction_is_exact_on_integer_scores_with_eps_below_one_over_t():
    g = torch.Generator().manual_seed(0)
    scores_TE = torch.randint(0, 5, (40, 4), generator=g).float()
    expert_T = balanced_assignment(scores_TE, eps=0.9 / 40)
    assert float(scores_TE[torch.arange(40), expert_T].sum()) == optimum(scores_TE)


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
