"""Heterogeneous experts: each expert is an FFN of its own width; equal
widths are the standard experts; the FLOPs are each expert's rows at its own
width, as the flop counter counts them, in the block's record too; the
active parameters are those of the experts the tokens used."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moebench.compose import load_config
from moebench.config import ModelConfig
from moebench.errors import ConfigError
from moebench.metrics.flops import param_count
from moebench.moe.block import MoEBlock
from moebench.moe.expert_kinds import build_experts
from moebench.moe.experts import Experts, FeedForward
from moebench.moe.heterogeneous_experts import HeterogeneousExperts
from moebench.routers.base import RouterContext
from moebench.routers.top2 import Top2Config, Top2Router

D = 8
WIDTHS = [3, 12, 5, 20]
# Rows of 10 tokens grouped by expert: token 3 twice, tokens 4, 6, 7, 8 none, expert 1 none.
ROWS = dict(token_R=torch.tensor([0, 3, 3, 9, 1, 2, 5, 9]), counts_E=torch.tensor([2, 0, 4, 2]))


def expert_ffn(experts: HeterogeneousExperts, e: int) -> FeedForward:
    """Expert e alone, as a dense FFN of its own width."""
    ffn = FeedForward(D, experts.widths[e], experts.activation).double()
    ffn.w_in.weight.data.copy_(experts.w_in_DH[e].t())
    ffn.w_out.weight.data.copy_(experts.w_out_FD[e].t())
    return ffn


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_each_row_goes_through_its_own_experts_ffn_of_its_own_width(activation):
    torch.manual_seed(0)
    experts = HeterogeneousExperts(D, WIDTHS, activation).double()
    assert [w_out.shape[0] for w_out in experts.w_out_FD] == WIDTHS
    H = [(2 if activation == "swiglu" else 1) * F for F in WIDTHS]
    assert [w_in.shape[1] for w_in in experts.w_in_DH] == H
    x = torch.randn(10, D, dtype=torch.double)
    weight_R = torch.rand(8, dtype=torch.double)
    y = experts(x, ROWS["token_R"], ROWS["counts_E"], weight_R)
    expert_R = torch.arange(4).repeat_interleave(ROWS["counts_E"])
    ref = torch.zeros_like(x)
    for r, (t, e) in enumerate(zip(ROWS["token_R"].tolist(), expert_R.tolist())):
        ref[t] += weight_R[r] * expert_ffn(experts, e)(x[t])
    torch.testing.assert_close(y, ref)


def test_equal_widths_are_the_standard_experts():
    torch.manual_seed(0)
    standard = Experts(4, D, 6, "swiglu").double()
    experts = HeterogeneousExperts(D, [6] * 4, "swiglu").double()
    for e in range(4):
        experts.w_in_DH[e].data.copy_(standard.w_in_EDH[e])
        experts.w_out_FD[e].data.copy_(standard.w_out_EFD[e])
    x, weight_R = torch.randn(10, D, dtype=torch.double), torch.rand(8, dtype=torch.double)
    args = (ROWS["token_R"], ROWS["counts_E"], weight_R)
    torch.testing.assert_close(experts(x, *args), standard(x, *args))
    assert experts.flops(ROWS["counts_E"]) == standard.flops(ROWS["counts_E"])
    uses_E = torch.tensor([0.5, 0.0, 1.0, 0.25])
    assert experts.params_per_token(uses_E) == standard.params_per_token(uses_E)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_flops_are_each_experts_rows_at_its_own_width_as_the_flop_counter_counts(activation):
    torch.manual_seed(0)
    experts = HeterogeneousExperts(D, WIDTHS, activation)
    with FlopCounterMode(display=False) as counter:
        experts(torch.randn(10, D), ROWS["token_R"], ROWS["counts_E"], torch.rand(8))
    H = [(2 if activation == "swiglu" else 1) * F for F in WIDTHS]
    analytic = sum(n * 2 * (D * h + F * D) for n, h, F in zip([2, 0, 4, 2], H, WIDTHS))
    assert experts.flops(ROWS["counts_E"]) == counter.get_total_flops() == analytic


def test_parameters_are_those_of_the_experts_a_token_uses():
    experts = HeterogeneousExperts(D, WIDTHS, "gelu")
    params_E = [2 * D * F for F in WIDTHS]
    assert param_count(experts) == sum(params_E)
    assert experts.params_per_token(torch.tensor([1.0, 0.0, 0.5, 0.0])) == params_E[0] + params_E[2] / 2


def test_the_block_records_the_flops_and_parameters_of_the_experts_it_ran():
    """Under top-2 with capacity, the record's figures follow the measured rows per expert."""
    torch.manual_seed(0)
    experts = HeterogeneousExperts(D, WIDTHS, "gelu")
    block = MoEBlock(Top2Router(Top2Config(name="top2"), D, 4, data=None), experts, k=2,
                     capacity_factor=1.0, eval_capacity_factor=1.0, dropless=False, drop_policy="position")
    x = torch.randn(32, D)
    with FlopCounterMode(display=False) as counter:
        _, stats = block(x, RouterContext())
    kept_E, T = stats.kept_E, 32
    assert stats.dropped > 0 and len(set(kept_E.tolist())) > 1  # a case where widths matter
    expert_flops = sum(n * 2 * 2 * D * F for n, F in zip(kept_E.tolist(), WIDTHS))
    flops = block.flops_per_token(stats)
    assert flops["experts"] == expert_flops / T
    assert counter.get_total_flops() == T * (flops["router"] + flops["experts"])
    uses = sum(n * 2 * D * F for n, F in zip(kept_E.tolist(), WIDTHS)) / T  # kept rows per token, by expert
    assert block.active_params(stats) == pytest.approx(param_count(block.router) + uses)


def test_moe_experts_heterogeneous_builds_experts_of_the_configured_widths():
    model = ModelConfig(name="test", d_model=D, d_ff=16)
    # The keys of MoEConfig that build_experts reads.
    moe = SimpleNamespace(num_experts=4, impl="auto", experts="heterogeneous", lora_rank=4,
                          expert_widths=WIDTHS)
    experts = build_experts(model, moe)
    assert isinstance(experts, HeterogeneousExperts) and experts.widths == WIDTHS and experts.num_experts == 4


@pytest.mark.parametrize("overrides, key", [
    (["moe.experts=heterogeneous"], "moe.expert_widths"),  # no widths
    (["moe.experts=heterogeneous", "moe.expert_widths=[64,64]"], "moe.expert_widths"),  # not one per expert
    (["moe.experts=heterogeneous", "moe.expert_widths=[0,64,64,64,64,64,64,64]"], "moe.expert_widths"),
    (["moe.expert_widths=[64,64,64,64,64,64,64,64]"], "moe.expert_widths"),  # standard experts take none
    (["moe.experts=heterogeneous", f"moe.expert_widths={[64] * 8}", "moe.impl=triton"], "moe.impl"),
    (["moe.experts=heterogeneous", f"moe.expert_widths={[64] * 8}", "moe.expert_parallel=2"],
     "moe.expert_parallel"),
])
def test_bad_widths_and_unsupported_options_fail_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        load_config(*overrides)


def test_one_width_per_expert_is_accepted():
    cfg = load_config("moe.experts=heterogeneous", "moe.expert_widths=[64,128,192,256,256,320,384,448]")
    assert cfg.moe.expert_widths == [64, 128, 192, 256, 256, 320, 384, 448]
