"""Top-p (dynamic-k) routing: each token takes the smallest prefix of its
experts by probability that reaches p; p -> 0 is top-1; the dynamic and
balance losses are the paper's; the experts-per-token distribution is recorded."""

import math

import pytest
import torch

from moebench.errors import ConfigError
from moebench.metrics.routing import RoutingAccumulator
from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts
from moebench.routers.base import RouterContext, sparse_from_topk
from moebench.routers.top1 import Top1Config, Top1Router, switch_balance_loss
from moebench.routers.top_p import TopPConfig, TopPRouter, balance_loss, top_p_routing
from moebench.tasks.synthetic import SyntheticTask
from moebench.train import train


def experts_of(routing, T: int) -> list[list[int]]:
    """Each token's experts in the order of its choices."""
    chosen: list[list[int]] = [[] for _ in range(T)]
    for t, e, c in zip(routing.token_idx_A.tolist(), routing.expert_idx_A.tolist(), routing.choice_A.tolist()):
        assert c == len(chosen[t])  # choice-major: a token's c-th choice comes after its earlier ones
        chosen[t].append(e)
    return chosen


def test_each_token_takes_experts_until_their_probabilities_reach_p_on_hand_probabilities():
    probs_TE = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    r = top_p_routing(probs_TE, 0.75)
    # 0.5 + 0.3 reaches 0.75; 0.7 does not, 0.7 + 0.1 does (ties: the lower index);
    # three quarters reach 0.75 exactly: "reaches", so the fourth is not taken.
    assert experts_of(r, 3) == [[0, 1], [1, 0], [0, 1, 2]]
    assert r.choice_A.tolist() == sorted(r.choice_A.tolist())
    torch.testing.assert_close(r.weight_A, probs_TE[r.token_idx_A, r.expert_idx_A])  # not renormalized
    assert not r.respects_capacity


@pytest.mark.parametrize("p", [0.2, 0.4, 0.7, 0.95])
def test_the_experts_are_the_smallest_prefix_of_the_sorted_probabilities_reaching_p(p):
    torch.manual_seed(0)
    probs_TE = torch.softmax(2 * torch.randn(300, 8), -1)
    for probs_E, experts in zip(probs_TE, experts_of(top_p_routing(probs_TE, p), 300)):
        top_E = probs_E.sort(descending=True, stable=True)
        assert experts == top_E.indices[: len(experts)].tolist()  # a prefix of the descending order
        mass = float(top_E.values[: len(experts)].sum())
        assert mass >= p - 1e-6 and mass - float(top_E.values[len(experts) - 1]) < p + 1e-6


def test_p_near_zero_is_top1_and_p_one_takes_every_expert_of_nonzero_probability():
    torch.manual_seed(0)
    probs_TE = torch.softmax(torch.randn(100, 8), -1)
    top1 = sparse_from_topk(probs_TE, *probs_TE.max(-1, keepdim=True))
    r = top_p_routing(probs_TE, 1e-6)
    for field in ("token_idx_A", "expert_idx_A", "weight_A", "choice_A", "score_A"):
        assert torch.equal(getattr(r, field), getattr(top1, field)), field
    assert all(sorted(e) == list(range(8)) for e in experts_of(top_p_routing(probs_TE, 1.0), 100))
    assert experts_of(top_p_routing(torch.tensor([[0.0, 0.6, 0.4]]), 1.0), 1) == [[1, 2]]


def test_the_router_at_p_near_zero_is_switch_top1_with_its_balance_loss():
    torch.manual_seed(0)
    x_TD = torch.randn(64, 16)
    top_p = TopPRouter(TopPConfig(name="top_p", p=1e-6, entropy_coef=0.0), 16, 4, None)
    top1 = Top1Router(Top1Config(name="top1"), 16, 4, None)
    top1.load_state_dict(top_p.state_dict())
    for training in (True, False):
        a, b = top_p.train(training)(x_TD, RouterContext()), top1.train(training)(x_TD, RouterContext())
        assert torch.equal(a.routing.expert_idx_A, b.routing.expert_idx_A)
        assert torch.equal(a.routing.weight_A, b.routing.weight_A)
        torch.testing.assert_close(a.aux_losses, b.aux_losses)


def test_balance_loss_counts_every_expert_a_token_selects():
    # Huang et al.: E * sum_i f_i Q_i, f_i the share of tokens selecting expert i.
    probs_TE = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    r = top_p_routing(probs_TE, 0.7)  # token 0: experts 0, 1; token 1: experts 2, 1
    f_E, Q_E = torch.tensor([1 / 2, 2 / 2, 1 / 2]), torch.tensor([0.3, 0.3, 0.4])
    torch.testing.assert_close(balance_loss(probs_TE, r), 3 * torch.dot(f_E, Q_E))
    one_each = top_p_routing(probs_TE, 1e-6)
    torch.testing.assert_close(balance_loss(probs_TE, one_each), switch_balance_loss(probs_TE, probs_TE.argmax(-1)))
    # Per routing group, averaged over the groups, as Switch's.
    probs_TE = torch.softmax(torch.randn(12, 3, generator=torch.Generator().manual_seed(0)), -1)
    r = top_p_routing(probs_TE, 0.6)
    halves = [balance_loss(probs_TE[:6], top_p_routing(probs_TE[:6], 0.6)),
              balance_loss(probs_TE[6:], top_p_routing(probs_TE[6:], 0.6))]
    torch.testing.assert_close(balance_loss(probs_TE, r, num_groups=2), sum(halves) / 2)


def test_the_dynamic_loss_is_beta_times_the_mean_routing_entropy_on_hand_logits():
    router = TopPRouter(TopPConfig(name="top_p"), 2, 2, None)
    torch.nn.init.eye_(router.gate.weight)  # logits = x
    with torch.no_grad():
        out = router(torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]), RouterContext())
    # P = (1/2, 1/2) and (3/4, 1/4); Loss_d = -sum_i P_i log P_i, averaged over tokens; beta = 1e-4
    entropy = (math.log(2) - (0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2
    assert math.isclose(float(out.aux_losses["entropy"]), 1e-4 * entropy, rel_tol=1e-6)
    # Both tokens take expert 0 alone (0.5 and 0.75 reach p = 0.4): f = (1, 0), Q_0 = 0.625.
    assert math.isclose(float(out.aux_losses["balance"]), 0.01 * 2 * 0.625, rel_tol=1e-6)


def test_the_experts_per_token_distribution_is_reported():
    torch.manual_seed(0)
    router = TopPRouter(TopPConfig(name="top_p", p=0.5), 16, 8, None)
    torch.nn.init.normal_(router.gate.weight, std=0.3)  # some tokens confident, some not
    layer = MoEBlock(router, Experts(8, 16, 32, "gelu"), k=2, capacity_factor=1.0, eval_capacity_factor=1.0,
                     dropless=True, drop_policy="position")
    x_TD = torch.randn(256, 16)
    _, stats = layer(x_TD, RouterContext())
    counts_T = torch.bincount(top_p_routing(torch.softmax(stats.logits_TE, -1), 0.5).token_idx_A, minlength=256)
    assert torch.equal(stats.experts_per_token_T, counts_T) and stats.dropped == 0
    acc = RoutingAccumulator()
    acc.add([stats])
    share = acc.summary()["experts_per_token_share"]
    assert len(share) > 2 and share[0] == 0.0  # a distribution over 1, 2, ... experts; nobody gets none
    torch.testing.assert_close(torch.tensor(share, dtype=torch.double),
                               torch.bincount(counts_T, minlength=len(share)).double() / 256)


def test_a_run_records_the_distribution_and_drops_nothing(make_config):
    cfg = make_config("router=top_p", "trainer.max_steps=2", "trainer.batch_tokens=64", "trainer.eval_batches=1",
                      "model.d_model=16", "model.d_ff=16", "model.n_heads=2", "task.oracle_baseline=false")
    metrics = train(cfg, SyntheticTask(cfg.task, cfg.data, cfg.seed)).metrics
    share = metrics["experts_per_token_share"]
    assert math.isclose(sum(share), 1.0) and share[0] == 0.0 and len(share) > 2
    assert metrics["drop_rate"] == 0.0  # dropless, as the reference implementation


@pytest.mark.parametrize("key, options", [("router.p", {"p": 0.0}), ("router.p", {"p": 1.5}),
                                          ("router.p", {"p": math.nan}), ("router.k", {"k": 1})])
def test_bad_options_name_the_key(key, options):
    with pytest.raises(ConfigError, match=key):
        TopPConfig(name="top_p", **options)
