"""GShard top-2: the second-expert policies in training and at evaluation,
renormalized weights, top-1 balance loss."""

import math

import pytest
import torch

from moebench.errors import ConfigError
from moebench.routers.base import RouterContext
from moebench.routers.top1 import switch_balance_loss
from moebench.routers.top2 import Top2Config, Top2Router, top2_routing


def per_token(routing, T):
    """(first expert, second expert or -1, first weight, second weight or 0) per token."""
    first = routing.choice_A == 0
    second_T = torch.full((T,), -1).index_put((routing.token_idx_A[~first],), routing.expert_idx_A[~first])
    w2_T = torch.zeros(T).index_put((routing.token_idx_A[~first],), routing.weight_A[~first])
    assert torch.equal(routing.token_idx_A[first], torch.arange(T))
    return routing.expert_idx_A[first], second_T, routing.weight_A[first], w2_T


def test_all_policy_gives_each_token_its_two_best_experts_renormalized():
    torch.manual_seed(0)
    probs_TE = torch.softmax(torch.randn(100, 8), -1)
    e1, e2, w1, w2 = per_token(top2_routing(probs_TE, "all", 0.2), 100)
    top_TK = probs_TE.topk(2, -1)
    assert torch.equal(e1, top_TK.indices[:, 0]) and torch.equal(e2, top_TK.indices[:, 1])
    torch.testing.assert_close(w1, top_TK.values[:, 0] / top_TK.values.sum(-1))
    torch.testing.assert_close(w1 + w2, torch.ones(100))


def test_random_policy_dispatches_the_second_with_probability_g2_over_threshold():
    torch.manual_seed(0)
    n = 20_000
    for g2 in [0.02, 0.1, 0.16, 0.3]:  # two experts: the renormalized g2 is the second gate itself
        probs_TE = torch.tensor([[1 - g2, g2]]).expand(n, 2)
        e1, e2, w1, _ = per_token(top2_routing(probs_TE, "random", 0.2), n)
        dispatched = float((e2 >= 0).float().mean())
        assert abs(dispatched - min(1.0, g2 / 0.2)) < 0.015
        torch.testing.assert_close(w1, torch.full((n,), 1 - g2))  # g1 stays g1 / (g1 + g2)


def test_sampling_policy_draws_the_second_in_proportion_to_the_other_gates():
    torch.manual_seed(0)
    n = 20_000
    probs_TE = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).expand(n, 4)
    e1, e2, w1, w2 = per_token(top2_routing(probs_TE, "sampling", 0.2), n)
    assert torch.all(e1 == 0) and torch.all(e2 != 0)
    share = torch.bincount(e2, minlength=4)[1:] / n
    torch.testing.assert_close(share, torch.tensor([0.6, 0.3, 0.1]), atol=0.015, rtol=0)
    g_T = probs_TE[torch.arange(n), e2]
    torch.testing.assert_close(w2, g_T / (0.5 + g_T))


def test_policies_in_training_and_evaluation_and_balance_loss_on_first_choices():
    torch.manual_seed(0)
    cfg = Top2Config(name="top2", second_policy="random", second_policy_eval="all", balance_coef=0.5)
    router = Top2Router(cfg, 16, 8, None)
    torch.nn.init.normal_(router.gate.weight)  # confident gates: g2 often under the threshold
    x = torch.randn(200, 16)
    train = router.train()(x, RouterContext())
    assert train.routing.expert_idx_A.numel() < 400  # some second experts not dispatched
    evaluation = router.eval()(x, RouterContext())
    assert evaluation.routing.expert_idx_A.numel() == 400
    probs_TE = torch.softmax(evaluation.logits_TE, -1)
    torch.testing.assert_close(evaluation.aux_losses["balance"],
                               0.5 * switch_balance_loss(probs_TE, probs_TE.argmax(-1)))


def test_evaluation_drops_second_experts_at_random_by_default_as_mesh_tensorflow():
    # Mesh TensorFlow's moe.py: second_policy_eval="random", second_threshold_eval=0.2.
    assert Top2Config(name="top2").second_policy_eval == "random"
    torch.manual_seed(0)
    router = Top2Router(Top2Config(name="top2"), 16, 8, None).eval()
    torch.nn.init.normal_(router.gate.weight)
    x = torch.randn(2000, 16)
    out = router(x, RouterContext())
    g2_T = torch.softmax(out.logits_TE.detach(), -1).topk(2, -1).values
    g2_T = g2_T[:, 1] / g2_T.sum(-1)  # renormalized second gate
    expected = float(torch.clamp(g2_T / 0.2, max=1).sum())
    seconds = int((out.routing.choice_A == 1).sum())
    assert seconds < 1900 and abs(seconds - expected) < 4 * math.sqrt(expected)


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match="router.k"):
        Top2Config(name="top2", k=1)
    with pytest.raises(ConfigError, match="router.second_policy"):
        Top2Config(name="top2", second_policy="threshold")
    with pytest.raises(ConfigError, match="router.second_policy_eval"):
        Top2Config(name="top2", second_policy_eval="none")
