"""Soft MoE: each sequence is its own group with about as many slots as tokens,
dispatch normalized over a group's tokens and combine over its slots, and with
one slot per token and identity weights, each token goes through its own expert."""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.metrics.flops import cost_metrics
from moebench.models.ffn import FFNFactory
from moebench.models.transformer import Transformer
from moebench.moe.experts import expert_ffn_torch
from moebench.routers.base import DataStats, RouterContext
from moebench.routers.soft import SoftConfig, SoftRouter

D = 16


def soft_layer(E: int = 4, block_size: int = 10, **options):
    """The Soft MoE block a run builds, for sequences of ``block_size`` tokens."""
    torch.manual_seed(0)
    model = ModelConfig(name="test", d_model=D, d_ff=32, block_size=block_size)
    return SoftRouter.build_layer(SoftConfig(name="soft", **options), model, MoEConfig(num_experts=E),
                                  DataStats())


def test_dispatch_sums_to_one_over_a_groups_tokens_and_combine_over_its_slots():
    torch.manual_seed(0)
    router = SoftRouter(SoftConfig(name="soft", slots_per_expert=3), D, 4, None)
    out = router(torch.randn(20, D), RouterContext(batch_shape=(2, 10)))
    dispatch_GLN, combine_GLN = out.routing.dispatch_GLN, out.routing.combine_GLN
    assert dispatch_GLN.shape == combine_GLN.shape == (2, 10, 12)
    torch.testing.assert_close(dispatch_GLN.sum(1), torch.ones(2, 12))
    torch.testing.assert_close(combine_GLN.sum(2), torch.ones(2, 10))
    # Per-expert logits: log of the combine mass a token gives each expert's slots.
    torch.testing.assert_close(torch.softmax(out.logits_TE, -1), combine_GLN.view(20, 4, 3).sum(-1))


def test_each_sequence_is_its_own_group_with_as_many_slots_as_tokens():
    # Puigcerver et al. 2023, section 2 and vmoe: groups are sequences (images),
    # slots per expert ceil(capacity_factor * group size / E) with capacity factor 1.
    B, L, E = 3, 10, 4
    layer = soft_layer(E, block_size=L)
    assert layer.router.slots_per_expert == math.ceil(L / E)
    x_TD = torch.randn(B * L, D)
    y_TD, stats = layer(x_TD, RouterContext(batch_shape=(B, L)))
    assert stats.expert_rows == B * E * 3  # about one expert row per token, as top-1
    for b in range(B):  # a sequence alone gives the same outputs: sequences never mix
        seq = slice(b * L, (b + 1) * L)
        y_LD, _ = layer(x_TD[seq], RouterContext(batch_shape=(1, L)))
        torch.testing.assert_close(y_TD[seq], y_LD)


def test_tokens_without_sequences_form_groups_of_at_most_group_size():
    # The synthetic task: independent examples, no batch_shape.
    layer = soft_layer(4, block_size=8)
    assert layer.router.cfg.group_size == 8 and layer.router.slots_per_expert == 2
    x_TD = torch.randn(20, D)
    y_TD, stats = layer(x_TD, RouterContext())
    assert stats.expert_rows == 3 * 4 * 2  # 3 groups of 7, 7, 6 (the last padded)
    for group in (slice(0, 7), slice(7, 14), slice(14, 20)):
        y_group, _ = layer(x_TD[group], RouterContext())
        torch.testing.assert_close(y_TD[group], y_group)
    # The synthetic task's run: groups of model.block_size examples, 16 slots per expert.
    router = FFNFactory(SoftConfig(name="soft"), ModelConfig(name="tiny"), MoEConfig(), DataStats())(0).router
    assert router.cfg.group_size == 128 and router.slots_per_expert == 16


def test_other_slot_counts_by_config():
    assert soft_layer(4, block_size=10, capacity_factor=2.0).router.slots_per_expert == 5
    assert soft_layer(4, block_size=10, slots_per_expert=1).router.slots_per_expert == 1
    assert soft_layer(4, block_size=10, group_size=40).router.slots_per_expert == 10
    for key, value in [("capacity_factor", 0.0), ("slots_per_expert", 0), ("group_size", 0)]:
        with pytest.raises(ConfigError, match=f"router.{key}"):
            SoftConfig(name="soft", **{key: value})


def test_one_slot_per_token_with_identity_weights_is_the_expert_applied_to_the_token():
    torch.manual_seed(0)
    for E, S in [(4, 1), (2, 2)]:
        T = E * S
        layer = soft_layer(E, block_size=T)
        assert layer.router.slots_per_expert == S
        with torch.no_grad():
            layer.router.slots_DN.copy_(torch.eye(D)[:, :T])  # slot n matches token n
            layer.router.scale.fill_(100.0)  # sharp softmaxes: dispatch and combine -> identity
        x_TD = 3 * torch.eye(D)[:T]
        y_TD, stats = layer(x_TD, RouterContext(batch_shape=(1, T)))
        expert_T = torch.arange(T) // S  # slot n belongs to expert n // S
        order = torch.argsort(expert_T, stable=True)
        expected = expert_ffn_torch(x_TD, layer.experts.w_in_EDH, layer.experts.w_out_EFD, order,
                                    torch.bincount(expert_T, minlength=E), torch.ones(T), "gelu")
        torch.testing.assert_close(y_TD, expected)
        assert stats.expert_rows == E * S


def test_slots_and_scale_are_the_only_router_parameters():
    router = SoftRouter(SoftConfig(name="soft", slots_per_expert=2), D, 4, None)
    assert {name for name, _ in router.named_parameters()} == {"slots_DN", "scale"}
    N = 4 * 2
    assert router.flops_per_token() == {"router": 2.0 * D * N, "soft_mixing": 2 * 2.0 * N * D}


def test_analytic_flops_match_the_flop_counter():
    B, L = 4, 32
    model_cfg = ModelConfig(name="test", d_model=64, d_ff=128, block_size=L)
    torch.manual_seed(0)
    ffn = FFNFactory(SoftConfig(name="soft"), model_cfg, MoEConfig(), DataStats())
    model = Transformer(model_cfg, vocab_size=97, causal=False, ffn=ffn)
    idx_BL = torch.randint(0, 97, (B, L))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(idx_BL, RouterContext(batch_shape=(B, L)))
    analytic = cost_metrics(model, out.layer_stats, context=L)
    assert analytic["flops_per_token"] == pytest.approx(counter.get_total_flops() / (B * L), rel=0.02)
    # Experts process one row per token (32 tokens, 8 experts of 4 slots), as top-1 does.
    assert out.layer_stats[0].expert_rows == B * L
