"""The MoE block against a token-by-token float64 computation."""

import torch

from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts, activate, expert_ffn_torch
from moebench.routers.base import RouterContext
from moebench.routers.top1 import Top1Config, Top1Router


def per_token_reference(x_TD, experts, token_R, expert_R, weight_R):
    y = torch.zeros_like(x_TD, dtype=torch.float64)
    w_in, w_out = experts.w_in_EDH.double(), experts.w_out_EFD.double()
    for t, e, w in zip(token_R.tolist(), expert_R.tolist(), weight_R.tolist()):
        h = activate(x_TD[t].double() @ w_in[e], experts.activation)
        y[t] += w * (h @ w_out[e])
    return y


def test_expert_ffn_matches_per_token_float64():
    for activation in ("gelu", "swiglu"):
        g = torch.manual_seed(0)
        experts = Experts(4, 16, 32, activation)
        x = torch.randn(10, 16)
        token_R = torch.tensor([0, 3, 3, 9, 1, 2, 5, 9])  # token 3 twice, 4/6/7/8 none
        counts_E = torch.tensor([2, 0, 4, 2])  # expert 1 empty
        expert_R = torch.repeat_interleave(torch.arange(4), counts_E)
        weight_R = torch.rand(8, generator=g)
        y = expert_ffn_torch(x, experts.w_in_EDH, experts.w_out_EFD, token_R, counts_E, weight_R, activation)
        ref = per_token_reference(x, experts, token_R, expert_R, weight_R)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
        assert torch.all(y[[4, 6, 7, 8]] == 0)


def test_top1_block_output_and_stats():
    torch.manual_seed(0)
    T, D, E = 64, 16, 4
    router = Top1Router(Top1Config(name="top1"), D, E, data=None)
    block = MoEBlock(router, Experts(E, D, 32, "gelu"), k=1, capacity_factor=1.0,
                     eval_capacity_factor=1.0, dropless=False, drop_policy="position")
    x = torch.randn(T, D)
    y, stats = block(x, RouterContext())
    probs = torch.softmax(router.gate_logits(x), -1)
    weight_T, expert_T = probs.max(-1)
    C = 16  # ceil(1.0 * 1 * 64 / 4)
    kept_T = torch.zeros(T, dtype=torch.bool)
    for e in range(E):  # position policy: the first C tokens of each expert
        kept_T[torch.nonzero(expert_T == e).flatten()[:C]] = True
    tokens = torch.nonzero(kept_T).flatten()
    ref = per_token_reference(x, block.experts, tokens, expert_T[tokens], weight_T[tokens].detach())
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5)
    assert stats.routed_E.tolist() == torch.bincount(expert_T, minlength=E).tolist()
    assert stats.dropped == int((~kept_T).sum())
    assert stats.experts_per_token_T.tolist() == kept_T.long().tolist()
    assert stats.top_expert_T.tolist() == torch.where(kept_T, expert_T, -1).tolist()
    assert set(stats.aux_losses) == {"balance"}
