"""Analytic FLOPs against torch.utils.flop_counter on the PyTorch path (within 2%)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from moebench.metrics.flops import cost_metrics
from moebench.models.ffn import FFNFactory
from moebench.models.mlp import TokenMLP
from moebench.models.transformer import Transformer
from moebench.routers.base import DataStats, RouterContext


def measured_and_analytic(model, inputs, context):
    # The math SDPA backend runs attention as matmuls the counter sees; the
    # CPU flash kernel is not registered with the flop counter.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(inputs, RouterContext())
    tokens = out.logits.shape[:-1].numel()
    return counter.get_total_flops() / tokens, cost_metrics(model, out.layer_stats, context)


@pytest.mark.parametrize("overrides", [
    ["router=dense"],  # no MoE layer: a dense transformer
    ["router=top1", "moe.capacity_factor=1.0"],  # routed, with drops
    ["router=top1", "model.activation=swiglu", "moe.dropless=true"],
])
def test_transformer_flops_match_the_flop_counter(make_config, overrides):
    cfg = make_config("model.d_model=64", "model.d_ff=128", "model.block_size=32", *overrides)
    torch.manual_seed(0)
    ffn = FFNFactory(cfg.router, cfg.model, cfg.moe, DataStats())
    model = Transformer(cfg.model, vocab_size=97, causal=True, ffn=ffn).train()
    idx = torch.randint(0, 97, (4, 32))
    measured, analytic = measured_and_analytic(model, idx, context=32)
    assert analytic["flops_per_token"] == pytest.approx(measured, rel=0.02)
    if "router=dense" not in overrides:
        assert analytic["flops_breakdown"]["experts"] > 0
        assert analytic["active_params"] < analytic["total_params"]


def test_mlp_flops_match_the_flop_counter(make_config):
    cfg = make_config("router=top1")
    torch.manual_seed(0)
    model = TokenMLP(cfg.model, 32, 16, FFNFactory(cfg.router, cfg.model, cfg.moe, DataStats()))
    measured, analytic = measured_and_analytic(model, torch.randn(256, 32), context=1)
    assert analytic["flops_per_token"] == pytest.approx(measured, rel=0.02)
