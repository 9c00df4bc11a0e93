"""Switch top-1: one expert per token, weight = its softmax probability, eq. 4 loss."""

import math

import torch

from moebench.routers.base import RouterContext, z_loss
from moebench.routers.top1 import Top1Config, Top1Router, switch_balance_loss


def test_each_token_reaches_one_expert_with_its_probability():
    torch.manual_seed(0)
    router = Top1Router(Top1Config(name="top1"), 16, 8, data=None).eval()
    x = torch.randn(50, 16)
    out = router(x, RouterContext())
    r = out.routing
    assert r.token_idx_A.tolist() == list(range(50))  # exactly one assignment per token
    probs = torch.softmax(x @ router.gate.weight.t(), -1)
    assert r.expert_idx_A.tolist() == probs.argmax(-1).tolist()
    torch.testing.assert_close(r.weight_A, probs.max(-1).values)
    assert out.logits_TE.dtype == torch.float32


def test_switch_loss_is_one_under_uniform_routing_and_grows_under_collapse():
    E, T = 8, 800
    uniform = torch.full((T, E), 1 / E)
    assert math.isclose(float(switch_balance_loss(uniform, torch.arange(T) % E)), 1.0, rel_tol=1e-6)
    collapsed = torch.zeros(T, E)
    collapsed[:, 0] = 1.0
    assert math.isclose(float(switch_balance_loss(collapsed, torch.zeros(T, dtype=torch.long))), E)


def test_balance_loss_is_scaled_by_alpha():
    torch.manual_seed(0)
    cfg = Top1Config(name="top1", balance_coef=0.5)
    router = Top1Router(cfg, 16, 4, data=None)
    out = router(torch.randn(32, 16), RouterContext())
    probs = torch.softmax(out.logits_TE, -1)
    expected = 0.5 * switch_balance_loss(probs, out.routing.expert_idx_A)
    torch.testing.assert_close(out.aux_losses["balance"], expected)


def test_jitter_only_at_train_time():
    torch.manual_seed(0)
    router = Top1Router(Top1Config(name="top1", jitter_eps=0.5), 16, 4, data=None)
    x = torch.randn(32, 16)
    router.eval()
    assert torch.equal(router(x, RouterContext()).logits_TE, router(x, RouterContext()).logits_TE)
    router.train()
    assert not torch.equal(router(x, RouterContext()).logits_TE, router(x, RouterContext()).logits_TE)


def test_z_loss_on_hand_logits():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp: log 2 and log 4
    expected = (math.log(2) ** 2 + math.log(4) ** 2) / 2
    assert math.isclose(float(z_loss(logits)), expected, rel_tol=1e-6)
    router = Top1Router(Top1Config(name="top1", z_loss_coef=1e-3), 16, 4, data=None)
    out = router(torch.randn(8, 16), RouterContext())
    torch.testing.assert_close(out.aux_losses["z_loss"], 1e-3 * z_loss(out.logits_TE))
