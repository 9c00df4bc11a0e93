"""DeepSeekMoE: shared experts see every token, the layer costs what the coarse
one does, the loss-free bias balances load without entering the weights, no
token is dropped (so it is causal), and V3's sequence-wise balance loss."""

import math

import torch

from moebench.config import ModelConfig, MoEConfig
from moebench.metrics.flops import ffn_flops, param_count
from moebench.moe.experts import Experts
from moebench.routers.base import DataStats, RouterContext
from moebench.metrics.causality import causal_leak
from moebench.routers.deepseek_moe import (
    DeepSeekMoEConfig, DeepSeekMoERouter, biased_topk, loss_free_bias_update, sequence_balance_loss,
)

MODEL = ModelConfig(name="test", d_model=16, d_ff=32)


def build(moe: MoEConfig, **router):
    cfg = DeepSeekMoEConfig(name="deepseek_moe", **router)
    return DeepSeekMoERouter.build_layer(cfg, MODEL, moe, DataStats())


def test_shared_experts_process_every_token_even_those_capacity_dropped():
    torch.manual_seed(0)
    layer = build(MoEConfig(num_experts=4, capacity_factor=0.05), granularity=2, num_shared=1,
                  dropless=False)
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


def test_the_bias_moves_once_per_training_step_by_its_whole_load_and_is_reported():
    torch.manual_seed(0)
    layer = build(MoEConfig(num_experts=4), granularity=2, num_shared=1, bias_rate=0.1)
    router = layer.routed.router
    x = torch.randn(64, 16)
    _, stats = layer.eval()(x, RouterContext())
    router.finish_step(lambda t: t)
    assert torch.all(router.bias_E == 0)  # evaluation leaves the bias alone
    # One step of two micro-batches: the step's whole load moves the bias, once, as it finishes.
    loads = [layer.train()(half, RouterContext())[1].routed_E.float() for half in x.chunk(2)]
    assert torch.all(router.bias_E == 0)
    router.finish_step(lambda t: t)
    load_E = loads[0] + loads[1]
    torch.testing.assert_close(router.bias_E, 0.1 * torch.sign(load_E.mean() - load_E))
    _, stats = layer.eval()(x, RouterContext())
    torch.testing.assert_close(stats.diagnostics["balance_bias"], router.bias_E)


def test_dropless_by_default_so_a_later_token_never_evicts_an_earlier_ones_experts(lm_model, random_tokens):
    # DeepSeek-V3 drops no token (section 2.1.2). Under a capacity that keeps first
    # choices before second ones, a later token evicts earlier tokens' lower choices.
    tight = {"capacity_factor": 0.5, "eval_capacity_factor": 0.5}
    sequences = random_tokens.get_batch("val", 4, torch.Generator().manual_seed(0)).inputs
    model = lm_model("deepseek_moe", tight)
    for training in (False, True):
        assert causal_leak(model, sequences, training=training) < 1e-5
    _, stats = model.blocks[0].ffn.train()(torch.randn(64, 32), RouterContext())
    assert stats.dropped == 0 and torch.all(stats.experts_per_token_T == 3)
    assert causal_leak(lm_model("deepseek_moe", tight, dropless=False), sequences) > 1e-3


def test_sequence_balance_loss_is_computed_per_sequence():
    E = 4
    # Two sequences of 4 tokens; the first sends all to expert 0, the second all to expert 1.
    one_hot_TE = torch.eye(E)[torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])]
    # Per sequence f_0 = E (every token), P_0 = 1: sum_i f_i P_i = E, though the
    # batch as a whole is half balanced (it would give E / 2).
    assert math.isclose(float(sequence_balance_loss(one_hot_TE, 1, num_sequences=2)), E)
    assert math.isclose(float(sequence_balance_loss(one_hot_TE, 1, num_sequences=1)), E / 2)
    # Uniform routing within each sequence: f_i = 1, P_i = 1 / E, the loss is 1 (eqs. 17-20).
    assert math.isclose(float(sequence_balance_loss(torch.eye(E).repeat(2, 1), 1, 2)), 1.0)
    # f counts the top K of the unbiased affinities (eq. 18), P normalizes them per token (eq. 19).
    scores_TE = torch.tensor([[0.9, 0.6, 0.3, 0.2], [0.1, 0.8, 0.7, 0.4]])
    f_E = torch.tensor([1.0, 2.0, 1.0, 0.0]) * E / (2 * 2)
    P_E = (scores_TE / scores_TE.sum(-1, keepdim=True)).mean(0)
    torch.testing.assert_close(sequence_balance_loss(scores_TE, 2, 1), (f_E * P_E).sum())


def test_router_adds_the_sequence_balance_loss_with_the_papers_alpha():
    assert DeepSeekMoEConfig(name="deepseek_moe").seq_balance_coef == 1e-4  # V3, section 4.2
    torch.manual_seed(0)
    layer = build(MoEConfig(num_experts=4), granularity=2, num_shared=1, bias_rate=0.0)
    router = layer.routed.router
    x = torch.randn(3 * 8, 16)
    _, stats = layer.train()(x, RouterContext(batch_shape=(3, 8)))
    scores_TE = torch.sigmoid(stats.logits_TE)
    expected = 1e-4 * sequence_balance_loss(scores_TE, router.cfg.k, num_sequences=3)
    torch.testing.assert_close(stats.aux_losses["seq_balance"], expected)
    stats.aux_losses["seq_balance"].backward()
    assert router.gate.weight.grad.abs().sum() > 0
    _, stats = build(MoEConfig(num_experts=4), seq_balance_coef=0.0)(x, RouterContext())
    assert "seq_balance" not in stats.aux_losses
