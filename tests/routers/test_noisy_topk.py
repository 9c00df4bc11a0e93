"""Noisy top-k: noise only in training, CV^2 losses, and the load estimator
P(x, i) against Monte Carlo."""

import torch

from moebench.routers.base import RouterContext
from moebench.routers.noisy_topk import NoisyTopkConfig, NoisyTopkRouter, cv_squared, prob_in_topk


def make_router(k: int = 2, E: int = 6, D: int = 16) -> NoisyTopkRouter:
    torch.manual_seed(0)
    router = NoisyTopkRouter(NoisyTopkConfig(name="noisy_topk", k=k), D, E, None)
    torch.nn.init.normal_(router.noise_gate.weight)  # W_noise starts at zero; give it a signal
    return router


def test_noise_only_in_training():
    router = make_router()
    x = torch.randn(50, 16)
    router.eval()
    a, b = router(x, RouterContext()).routing, router(x, RouterContext()).routing
    assert torch.equal(a.expert_idx_A, b.expert_idx_A) and a.expert_idx_A.numel() == 100
    clean_TE = x @ router.gate.weight.t()
    kept_TK = clean_TE.topk(2, -1)
    assert torch.equal(a.expert_idx_A, kept_TK.indices.t().reshape(-1))
    torch.testing.assert_close(a.weight_A, torch.softmax(kept_TK.values, -1).t().reshape(-1))  # eq. 3
    router.train()
    a, b = router(x, RouterContext()).routing, router(x, RouterContext()).routing
    assert not torch.equal(a.expert_idx_A, b.expert_idx_A)


def test_cv_squared_zero_when_even_positive_when_skewed():
    assert float(cv_squared(torch.full((4,), 2.5))) == 0.0
    assert abs(float(cv_squared(torch.tensor([4.0, 0.0, 0.0, 0.0]))) - 3.0) < 1e-6  # var 3 / mean^2 1
    router = NoisyTopkRouter(NoisyTopkConfig(name="noisy_topk", k=1), 4, 4, None).train()
    with torch.no_grad():
        router.gate.weight.copy_(20 * torch.eye(4))  # token e_i -> expert i, far above the noise
    even = router(torch.eye(4).repeat(16, 1), RouterContext()).aux_losses
    skewed = router(torch.eye(4)[[0] * 64], RouterContext()).aux_losses
    assert even["importance"] < 1e-6 and even["load"] < 1e-6
    assert skewed["importance"] > 0.29 and skewed["load"] > 0.29  # 0.1 * CV^2 = 0.1 * 3


def test_load_estimator_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    T, E, k, n = 4, 6, 2, 20_000
    clean_TE = torch.randn(T, E, generator=g)
    std_TE = 0.2 + torch.rand(T, E, generator=g)
    noisy_TE = clean_TE + std_TE * torch.randn(T, E, generator=g)
    p_TE = prob_in_topk(clean_TE, noisy_TE, std_TE, k)
    for t in range(T):
        for i in range(E):
            # Draw expert i's noise again, the others' as they were (Appendix A).
            h_NE = noisy_TE[t].repeat(n, 1)
            h_NE[:, i] = clean_TE[t, i] + std_TE[t, i] * torch.randn(n, generator=g)
            in_topk = (h_NE.topk(k, -1).indices == i).any(-1).float().mean()
            assert abs(float(in_topk) - float(p_TE[t, i])) < 0.015


def test_noise_gate_stays_float32_under_bfloat16_autocast():
    # The noise std softplus(x W_noise) decides the noisy top-k as much as the gate does.
    router = make_router().train()
    x = torch.randn(64, 16)
    torch.manual_seed(1)
    reference = router(x, RouterContext())
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = router(x, RouterContext())
    assert torch.equal(out.routing.expert_idx_A, reference.routing.expert_idx_A)
    assert torch.equal(out.routing.weight_A, reference.routing.weight_A)
    assert torch.equal(out.aux_losses["load"], reference.aux_losses["load"])
