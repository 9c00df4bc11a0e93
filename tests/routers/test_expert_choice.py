"""Expert choice: every expert takes exactly C tokens; a token reaches 0..E experts."""

import math

import pytest
import torch

from moebench.errors import ConfigError
from moebench.metrics.routing import RoutingAccumulator
from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts
from moebench.routers.base import RouterContext
from moebench.routers.expert_choice import ExpertChoiceConfig, ExpertChoiceRouter, expert_choice


def test_each_expert_takes_its_top_c_tokens_on_hand_logits():
    probs_TE = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]])
    r = expert_choice(probs_TE, 2)
    chosen = {e: sorted(r.token_idx_A[r.expert_idx_A == e].tolist()) for e in range(3)}
    assert chosen == {0: [0, 2], 1: [1, 3], 2: [2, 3]}  # token 2 reaches two experts
    torch.testing.assert_close(r.weight_A, probs_TE[r.token_idx_A, r.expert_idx_A])
    assert r.respects_capacity


def block(T: int, E: int, cf: float) -> tuple[MoEBlock, torch.Tensor]:
    torch.manual_seed(0)
    router = ExpertChoiceRouter(ExpertChoiceConfig(name="expert_choice", capacity_factor=cf), 16, E, None)
    # A block capacity far below C: expert choice fits its own capacity, nothing is dropped.
    return MoEBlock(router, Experts(E, 16, 32, "gelu"), k=1, capacity_factor=0.1,
                    eval_capacity_factor=0.1, dropless=False, drop_policy="position"), torch.randn(T, 16)


def test_every_expert_processes_exactly_c_tokens():
    for T, E, cf in [(64, 4, 2.0), (50, 8, 2.0), (30, 4, 1.0)]:
        layer, x = block(T, E, cf)
        _, stats = layer(x, RouterContext())
        C = math.ceil(cf * T / E)
        assert stats.kept_E.tolist() == [C] * E and stats.dropped == 0
        assert int(stats.experts_per_token_T.sum()) == E * C


def test_experts_per_token_share_counts_tokens_reaching_0_to_E_experts():
    layer, x = block(64, 4, 2.0)
    _, stats = layer(x, RouterContext())
    acc = RoutingAccumulator()
    acc.add([stats])
    share = acc.summary()["experts_per_token_share"]
    expected = torch.bincount(stats.experts_per_token_T, minlength=5).double() / 64
    assert math.isclose(sum(share), 1.0) and expected[len(share):].sum() == 0  # listed up to the most
    torch.testing.assert_close(torch.tensor(share, dtype=torch.double), expected[: len(share)])
    assert math.isclose(sum(n * s for n, s in enumerate(share)), 2.0)  # cf experts per token on average


@pytest.mark.parametrize("cf", [0.0, -1.0, math.inf, math.nan])
def test_a_capacity_factor_that_is_not_a_positive_number_is_refused(cf):
    with pytest.raises(ConfigError, match="router.capacity_factor"):
        ExpertChoiceConfig(name="expert_choice", capacity_factor=cf)
