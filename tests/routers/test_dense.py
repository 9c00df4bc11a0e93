"""The dense baseline: width k * d_ff (equal FLOPs) or E * d_ff (equal parameters)."""

import pytest
import torch

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.metrics.flops import ffn_flops, param_count
from moebench.models.ffn import DenseLayer
from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts
from moebench.routers.base import DataStats, RouterContext
from moebench.routers.dense import DenseConfig, DenseRouter
from moebench.routers.top1 import Top1Config, Top1Router

MODEL = ModelConfig(name="test", d_model=16, d_ff=32)
MOE = MoEConfig(num_experts=8, dropless=True)


def layer(**options) -> DenseLayer:
    return DenseRouter.build_layer(DenseConfig(name="dense", **options), MODEL, MOE, DataStats())


@pytest.mark.parametrize("k", [1, 2])
def test_active_width_matches_the_flops_of_a_top_k_moe(k):
    dense = layer(k=k, params="active")
    assert isinstance(dense, DenseLayer) and dense.ffn.w_out.in_features == k * 32
    assert dense.flops_per_token(None) == {"ffn": k * ffn_flops(16, 32, "gelu")}
    if k == 1:  # the expert FLOPs of a top-1 MoE, measured on a forward pass
        moe = MoEBlock(Top1Router(Top1Config(name="top1"), 16, 8, None), Experts(8, 16, 32, "gelu"),
                       k=1, capacity_factor=1.0, eval_capacity_factor=1.0, dropless=True,
                       drop_policy="position")
        _, stats = moe(torch.randn(64, 16), RouterContext())
        assert moe.flops_per_token(stats)["experts"] == dense.flops_per_token(None)["ffn"]


def test_total_width_matches_the_parameters_of_the_experts():
    dense = layer(params="total")
    assert dense.ffn.w_out.in_features == 8 * 32
    assert param_count(dense) == param_count(Experts(8, 16, 32, "gelu"))
    y, stats = dense(torch.randn(5, 16), RouterContext())
    assert y.shape == (5, 16) and stats is None  # no routing


def test_params_option_is_validated():
    with pytest.raises(ConfigError, match="router.params"):
        DenseConfig(name="dense", params="half")
