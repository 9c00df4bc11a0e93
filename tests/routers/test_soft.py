"""Soft MoE: dispatch normalized over tokens, combine over slots, and with one
slot per token and identity weights, each token goes through its own expert."""

import torch

from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts, expert_ffn_torch
from moebench.routers.base import RouterContext
from moebench.routers.soft import SoftConfig, SoftRouter


def soft_block(E: int, S: int, D: int) -> MoEBlock:
    router = SoftRouter(SoftConfig(name="soft", slots_per_expert=S), D, E, None)
    return MoEBlock(router, Experts(E, D, 32, "gelu"), k=1, capacity_factor=1.0,
                    eval_capacity_factor=1.0, dropless=False, drop_policy="position")


def test_dispatch_sums_to_one_over_tokens_and_combine_over_slots():
    torch.manual_seed(0)
    router = SoftRouter(SoftConfig(name="soft", slots_per_expert=3), 16, 4, None)
    out = router(torch.randn(20, 16), RouterContext())
    dispatch_TN, combine_TN = out.routing.dispatch_TN, out.routing.combine_TN
    assert dispatch_TN.shape == combine_TN.shape == (20, 12)
    torch.testing.assert_close(dispatch_TN.sum(0), torch.ones(12))
    torch.testing.assert_close(combine_TN.sum(1), torch.ones(20))
    # Per-expert logits: log of the combine mass a token gives each expert's slots.
    torch.testing.assert_close(torch.softmax(out.logits_TE, -1), combine_TN.view(20, 4, 3).sum(-1))


def test_one_slot_per_token_with_identity_weights_is_the_expert_applied_to_the_token():
    torch.manual_seed(0)
    for E, S in [(4, 1), (2, 2)]:
        T, D = E * S, 8
        layer = soft_block(E, S, D)
        with torch.no_grad():
            layer.router.slots_DN.copy_(torch.eye(D)[:, :T])  # slot n matches token n
            layer.router.scale.fill_(100.0)  # sharp softmaxes: dispatch and combine -> identity
        x_TD = 3 * torch.eye(D)[:T]
        y_TD, stats = layer(x_TD, RouterContext())
        expert_T = torch.arange(T) // S  # slot n belongs to expert n // S
        order = torch.argsort(expert_T, stable=True)
        expected = expert_ffn_torch(x_TD, layer.experts.w_in_EDH, layer.experts.w_out_EFD, order,
                                    torch.bincount(expert_T, minlength=E), torch.ones(T), "gelu")
        torch.testing.assert_close(y_TD, expected)
        assert stats.soft and stats.expert_rows == E * S


def test_slots_and_scale_are_the_only_router_parameters():
    router = SoftRouter(SoftConfig(name="soft", slots_per_expert=2), 16, 4, None)
    assert {name for name, _ in router.named_parameters()} == {"slots_DN", "scale"}
    assert router.flops_per_token() == {"router": 2.0 * 16 * 8}
