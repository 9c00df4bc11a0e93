"""DeepSeekMoE: shared experts see every token, the layer costs what the coarse
one does, and the loss-free bias balances load without entering the weights."""

import torch

from moebench.config import ModelConfig, MoEConfig
from moebench.metrics.flops import ffn_flops, param_count
from moebench.moe.experts import Experts
from moebench.routers.base import DataStats, RouterContext
from moebench.routers.deepseek_moe import (
    DeepSeekMoEConfig, DeepSeekMoERouter, biased_topk, loss_free_bias_update,
)

MODEL = ModelConfig(name="test", d_model=16, d_ff=32)


def build(moe: MoEConfig, **router):
    cfg = DeepSeekMoEConfig(name="deepseek_moe", **router)
    return DeepSeekMoERouter.build_layer(cfg, MODEL, moe, DataStats())


def test_shared_experts_process_every_token_even_those_capacity_dropped():
    torch.manual_seed(0)
    layer = build(MoEConfig(num_experts=4, capacity_factor=0.05), granularity=2, num_shared=1)
    x = torch.randn(64, 16)
    y, stats = layer.train()(x, RouterContext())
    y_shared = layer.shared(x)
    reached_none = stats.experts_per_token_T == 0
    assert reached_none.sum() > 32  # capacity 1 per expert: most tokens reach no routed expert
    torch.testing.assert_close(y[reached_none], y_shared[reached_none])
    assert torch.all(y_shared.abs().sum(-1) > 0)


def test_fine_grained_and_shared_experts_cost_what_the_coarse_layer_does():
    E, K = 4, 2
    layer = build(MoEConfig(num_experts=E, dropless=True), k=K, granularity=4, num_shared=2)
    assert layer.routed.experts.num_experts == 14 and layer.routed.k == 6  # 16 - 2, 8 - 2; width 8
    _, stats = layer(torch.randn(32, 16), RouterContext())
    flops = layer.flops_per_token(stats)
    assert flops["experts"] + flops["shared_experts"] == K * ffn_flops(16, 32, "gelu")
    expert_params = param_count(layer.routed.experts) + param_count(layer.shared)
    assert expert_params == param_count(Experts(E, 16, 32, "gelu"))


def test_combine_weights_are_the_unbiased_scores():
    g = torch.Generator().manual_seed(0)
    scores = torch.sigmoid(torch.randn(10, 6, generator=g))
    bias = torch.tensor([5.0, 0, 0, 0, 0, -5.0])  # forces expert 0 in, expert 5 out
    weight, expert = biased_topk(scores, bias, k=2, normalize=True)
    assert torch.all(expert[:, 0] == 0) and torch.all(expert != 5)
    picked = scores.gather(1, expert)
    torch.testing.assert_close(weight, picked / picked.sum(-1, keepdim=True))
    probs = torch.softmax(torch.randn(10, 6, generator=g), -1)
    weight, expert = biased_topk(probs, bias, k=2, normalize=False)
    torch.testing.assert_close(weight, probs.gather(1, expert))


def test_bias_update_moves_a_skewed_load_to_uniform():
    g = torch.Generator().manual_seed(0)
    T, E, K = 512, 8, 2
    skew_E = torch.linspace(2.0, -2.0, E)  # expert 0 is everyone's favourite
    bias_E = torch.zeros(E)

    def load(bias_E):
        scores = torch.sigmoid(torch.randn(T, E, generator=g) + skew_E)
        return torch.bincount(biased_topk(scores, bias_E, K, normalize=True)[1].flatten(), minlength=E)

    def max_over_mean(load_E):
        return float(load_E.max() / load_E.float().mean())

    before = max_over_mean(load(bias_E))
    for _ in range(300):
        bias_E = loss_free_bias_update(bias_E, load(bias_E), rate=0.01)
    after = max_over_mean(load(bias_E))
    assert before > 3.0 and after < 1.25
    assert bias_E[0] < 0 < bias_E[-1]  # the favourite pushed down, the least liked pulled up


def test_layer_updates_the_bias_once_per_training_step_and_reports_it():
    torch.manual_seed(0)
    layer = build(MoEConfig(num_experts=4), granularity=2, num_shared=1, bias_rate=0.1)
    router = layer.routed.router
    x = torch.randn(64, 16)
    _, stats = layer.eval()(x, RouterContext())
    assert torch.all(router.bias_E == 0)  # evaluation leaves the bias alone
    _, stats = layer.train()(x, RouterContext())
    load_E = stats.routed_E.float()
    torch.testing.assert_close(router.bias_E, 0.1 * torch.sign(load_E.mean() - load_E))
    torch.testing.assert_close(stats.diagnostics["balance_bias"], router.bias_E)
