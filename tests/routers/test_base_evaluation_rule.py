"""One test-time rule for the routers whose papers route every token by its
own scores at evaluation (BASE, S-BASE, RL-R, k-means): no capacity, so
nothing is dropped and the load shows the imbalance; ``eval_dropless=false``
applies the evaluation capacity factor instead."""

import pytest
import torch

from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts
from moebench.routers import ROUTERS
from moebench.routers.base import RouterContext

E, D, T = 4, 16, 64
C = T // E  # the capacity ceil(1.0 * T / E) at eval_capacity_factor 1.0


def skewed_block(name: str, **options) -> tuple[MoEBlock, torch.Tensor]:
    """An evaluation-mode block whose router sends most of T tokens to expert 0."""
    torch.manual_seed(0)
    router = ROUTERS.get(name).cls(ROUTERS.get(name).config_cls(name=name, **options), D, E, None)
    if name == "kmeans":
        router.centroids_ED.copy_(torch.eye(E, D))
        router.initialized.fill_(True)
        toward_TD = torch.eye(E, D)[0].expand(T, D)
    else:
        toward_TD = (router.gate.weight[0] / router.gate.weight[0].norm()).detach().expand(T, D)
    block = MoEBlock(router, Experts(E, D, 32, "gelu"), k=1, capacity_factor=1.0, eval_capacity_factor=1.0,
                     dropless=False, drop_policy="position").eval()
    return block, torch.randn(T, D) + 3 * toward_TD


@pytest.mark.parametrize("name", ["base", "sbase", "rl", "kmeans"])
def test_evaluation_drops_nothing_unless_told_to(name):
    block, x_TD = skewed_block(name)
    _, stats = block(x_TD, RouterContext())
    assert stats.kept_E.max() > C  # over the evaluation capacity ...
    assert stats.dropped == 0 and torch.all(stats.experts_per_token_T == 1)  # ... yet nothing dropped

    block, x_TD = skewed_block(name, eval_dropless=False)
    _, stats = block(x_TD, RouterContext())
    assert stats.kept_E.max() == C and stats.dropped > 0
