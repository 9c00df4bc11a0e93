"""LoRA experts: each expert is the shared FFN plus its own low-rank deltas;
rank 0, and zero deltas at the start, are the shared FFN; the parameters,
FLOPs and gradients are those of that formula; any router drives them
through the standard MoE block."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moebench.config import ModelConfig
from moebench.metrics.flops import param_count
from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts, FeedForward
from moebench.moe.expert_kinds import build_experts
from moebench.moe.lora_experts import LoRAExperts
from moebench.routers.base import RouterContext
from moebench.routers.dense_softmax import DenseSoftmaxConfig, DenseSoftmaxRouter
from moebench.routers.top1 import Top1Config, Top1Router
from moebench.routers.top2 import Top2Config, Top2Router

E, D, F = 4, 8, 12
ROUTERS = {
    "top1": lambda: Top1Router(Top1Config(name="top1"), D, E, data=None),
    "top2": lambda: Top2Router(Top2Config(name="top2"), D, E, data=None),
    "dense_softmax": lambda: DenseSoftmaxRouter(DenseSoftmaxConfig(name="dense_softmax", k=E), D, E,
                                                data=None),
}


def make_block(router: str, experts: torch.nn.Module) -> MoEBlock:
    k = {"top1": 1, "top2": 2, "dense_softmax": E}[router]
    return MoEBlock(ROUTERS[router](), experts, k=k, capacity_factor=1.0, eval_capacity_factor=1.0,
                    dropless=False, drop_policy="position")


def shared_ffn(lora: LoRAExperts) -> FeedForward:
    """The dense FFN with the LoRA experts' shared weights."""
    ffn = FeedForward(D, F, lora.activation).to(lora.w_in_DH.dtype)
    ffn.w_in.weight.data.copy_(lora.w_in_DH.t())
    ffn.w_out.weight.data.copy_(lora.w_out_FD.t())
    return ffn


def expanded(lora: LoRAExperts) -> Experts:
    """Standard experts holding each LoRA expert's full matrices, W + s A_e B_e."""
    experts = Experts(E, D, F, lora.activation).to(lora.w_in_DH.dtype)
    experts.w_in_EDH.data.copy_(lora.w_in_DH + lora.scale * lora.a_in_EDr @ lora.b_in_ErH)
    experts.w_out_EFD.data.copy_(lora.w_out_FD + lora.scale * lora.a_out_EFr @ lora.b_out_ErD)
    return experts


def randomize_deltas(lora: LoRAExperts) -> None:
    for b in (lora.b_in_ErH, lora.b_out_ErD):
        torch.nn.init.normal_(b, std=0.5)


# Rows of 10 tokens grouped by expert: token 3 twice, tokens 4, 6, 7, 8 none, expert 1 none.
ROWS = dict(token_R=torch.tensor([0, 3, 3, 9, 1, 2, 5, 9]), counts_E=torch.tensor([2, 0, 4, 2]))


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_rank_zero_under_dense_softmax_is_the_dense_ffn(activation):
    torch.manual_seed(0)
    lora = LoRAExperts(E, D, F, activation, rank=0).double()
    block = make_block("dense_softmax", lora).double()
    x = torch.randn(16, D, dtype=torch.double)
    y, stats = block(x, RouterContext())
    assert stats.dropped == 0 and bool((stats.experts_per_token_T == E).all())
    torch.testing.assert_close(y, shared_ffn(lora)(x))  # sum_e p_e FFN(x), with sum_e p_e = 1


@pytest.mark.parametrize("rank", [0, 8])
def test_every_expert_is_the_shared_ffn_until_its_deltas_move(rank):
    """Rank 0 always; any rank at initialisation, where B = 0 (and A is not)."""
    torch.manual_seed(0)
    lora = LoRAExperts(E, D, F, "gelu", rank).double()
    assert rank == 0 or bool(lora.a_in_EDr.ne(0).all())
    x = torch.randn(10, D, dtype=torch.double)
    weight_R = torch.rand(8, dtype=torch.double)
    y = lora(x, ROWS["token_R"], ROWS["counts_E"], weight_R)
    ffn_TD = shared_ffn(lora)(x)
    ref = torch.zeros_like(x).index_add(0, ROWS["token_R"], weight_R[:, None] * ffn_TD[ROWS["token_R"]])
    torch.testing.assert_close(y, ref)


def test_parameters_are_the_shared_ffn_once_plus_the_deltas_of_every_expert():
    for activation, H in (("gelu", F), ("swiglu", 2 * F)):
        for r in (0, 1, 5):
            lora = LoRAExperts(E, D, F, activation, rank=r)
            assert param_count(lora) == D * H + F * D + E * r * (D + H + F + D)
            # A token reaching 2 experts uses the base once and two experts' deltas.
            uses_E = torch.tensor([0.5, 0.0, 1.0, 0.5])
            assert lora.params_per_token(uses_E) == D * H + F * D + 2 * r * (D + H + F + D)


def test_flops_match_the_flop_counter():
    torch.manual_seed(0)
    lora = LoRAExperts(E, D, F, "swiglu", rank=3)
    with FlopCounterMode(display=False) as counter:
        lora(torch.randn(10, D), ROWS["token_R"], ROWS["counts_E"], torch.rand(8))
    per_row = 2 * (D * 2 * F + F * D) + 2 * 3 * (D + 2 * F + F + D)
    assert lora.flops(ROWS["counts_E"]) == counter.get_total_flops() == 8 * per_row


def test_gradients_reach_the_deltas_of_exactly_the_experts_that_got_rows():
    torch.manual_seed(0)
    lora = LoRAExperts(E, D, F, "gelu", rank=3)
    randomize_deltas(lora)  # with B = 0, A's gradient is zero for every expert
    y = lora(torch.randn(10, D), ROWS["token_R"], ROWS["counts_E"], torch.rand(8))
    (y * torch.randn_like(y)).sum().backward()
    got_rows_E = ROWS["counts_E"] > 0
    for name in ("a_in_EDr", "b_in_ErH", "a_out_EFr", "b_out_ErD"):
        grad_E = getattr(lora, name).grad.abs().flatten(1).sum(1)
        assert torch.equal(grad_E > 0, got_rows_E), name
    assert bool(lora.w_in_DH.grad.ne(0).any()) and bool(lora.w_out_FD.grad.ne(0).any())


@pytest.mark.parametrize("router", ["top1", "top2", "dense_softmax"])
@pytest.mark.parametrize("training", [True, False])
def test_any_router_drives_them_as_experts_of_full_matrices(router, training):
    """The block with LoRA experts equals the block with standard experts whose
    matrices are W + s A_e B_e: same routing, capacity and drops."""
    torch.manual_seed(0)
    lora = LoRAExperts(E, D, F, "gelu", rank=2).double()
    randomize_deltas(lora)
    with_lora = make_block(router, lora).double().train(training)
    with_full = make_block(router, expanded(lora)).double().train(training)
    with_full.router.load_state_dict(with_lora.router.state_dict())
    x = torch.randn(32, D, dtype=torch.double)
    torch.manual_seed(1)  # top2's random second expert: the same draws for both
    y, stats = with_lora(x, RouterContext())
    torch.manual_seed(1)
    y_full, stats_full = with_full(x, RouterContext())
    torch.testing.assert_close(y, y_full)
    assert torch.equal(stats.kept_E, stats_full.kept_E) and stats.dropped == stats_full.dropped
    assert router == "dense_softmax" or stats.dropped > 0  # capacity 1.0 drops: the block's own dispatch
    y.square().sum().backward()
    assert all(p.grad is not None for p in with_lora.parameters())


def test_moe_experts_chooses_the_experts_of_every_block():
    model = ModelConfig(name="test", d_model=D, d_ff=F)
    # moe.experts and moe.lora_rank of MoEConfig, with the block's other options.
    moe = SimpleNamespace(num_experts=E, impl="auto", experts="lora", lora_rank=3)
    lora = build_experts(model, moe)
    assert isinstance(lora, LoRAExperts) and lora.a_in_EDr.shape == (E, D, 3)
    standard = build_experts(model, SimpleNamespace(**{**vars(moe), "experts": "standard"}))
    assert type(standard) is Experts and standard.num_experts == E
