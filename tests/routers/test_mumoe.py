"""muMoE: the factorized forward is the explicit sum over experts of the
reconstructed weight tensors, every factor learns, no [T, N, D] tensor is ever
formed at thousands of experts, and its FLOPs, parameters and rank rule are
the formulas'."""

import json
import math

import pytest
import torch
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.metrics.flops import param_count
from moebench.metrics.routing import RoutingAccumulator
from moebench.moe.experts import activate
from moebench.moe.mumoe import MuMoELayer, mumoe_param_count
from moebench.routers.base import RouterContext
from moebench.routers.mumoe import MuMoEConfig, MuMoEGate, entmax15, matched_rank
from moebench.run import run


def make_layer(num_experts, d_model, d_ff, rank, activation="gelu", gate="entmax15"):
    cfg = MuMoEConfig(name="mumoe", num_experts=num_experts, rank=rank, gate=gate)
    return MuMoELayer(MuMoEGate(cfg, d_model), num_experts, d_model, d_ff, activation, rank)


def cp_tensor(cp):
    """W[n, i, o] = sum_r U_N[n, r] U_I[i, r] U_O[o, r], formed in full."""
    return torch.einsum("nr,ir,or->nio", cp.expert_NR, cp.in_IR, cp.out_OR)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_factorized_forward_is_the_explicit_sum_over_experts_of_the_weight_tensors(activation):
    torch.manual_seed(0)
    T, N, D, F, R = 9, 5, 6, 7, 4
    layer = make_layer(N, D, F, R, activation).double()
    torch.nn.init.normal_(layer.gate.weight_ND)  # coefficients that differ by token and expert
    x = torch.randn(T, D, dtype=torch.double)
    y, stats = layer(x, RouterContext())

    coef_TN, _ = layer.gate(x)
    assert 0 < stats.experts_per_token_T.min() and stats.experts_per_token_T.max() < N  # entmax: sparse
    W1_NIO, W2_NIO = cp_tensor(layer.up), cp_tensor(layer.down)
    ref = torch.zeros_like(x)
    for t in range(T):  # eq. 1, expert by expert: sum_n a_n W_n^T z, in both layers
        h = activate(sum(coef_TN[t, n] * (x[t] @ W1_NIO[n]) for n in range(N)), activation)
        ref[t] = sum(coef_TN[t, n] * (h @ W2_NIO[n]) for n in range(N))
    torch.testing.assert_close(y, ref)


def test_gradients_reach_every_factor_and_the_gate_from_its_zero_start():
    torch.manual_seed(0)
    layer = make_layer(16, 8, 12, 5)
    assert torch.all(layer.gate.weight_ND == 0)  # uniform coefficients at the start, as the official code
    x = torch.randn(20, 8)
    coef_TN, _ = layer.gate(x)
    torch.testing.assert_close(coef_TN, torch.full((20, 16), 1 / 16))
    y, _ = layer(x, RouterContext())
    (y * torch.randn_like(y)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum(-1).gt(0).all()), name


class LargestOutput(TorchDispatchMode):
    """The largest tensor (elements) any op produces, and its shape."""

    def __init__(self) -> None:
        super().__init__()
        self.numel, self.shape = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.shape = t.numel(), tuple(t.shape)
        return out


def test_thousands_of_experts_form_no_tensor_beyond_the_coefficients():
    T, N, D, F, R = 32, 4096, 16, 32, 8
    torch.manual_seed(0)
    layer = make_layer(N, D, F, R)
    x = torch.randn(T, D)
    with LargestOutput() as probe:
        y, stats = layer(x, RouterContext())
        y.square().sum().backward()
    # Forward and backward: nothing larger than the [T, N] coefficients (and
    # their sort); the explicit form would hold a [T, N, D]-sized product.
    assert probe.numel == T * N and probe.shape == (T, N)
    assert stats.routed_E.shape == (N,)

    with LargestOutput() as probe:  # the probe does see the explicit sum's tensors
        torch.einsum("tn,nio,ti->to", layer.gate(x)[0], cp_tensor(layer.up), x)
    assert probe.numel >= N * D * F


def test_analytic_flops_match_the_flop_counter_and_count_every_token_alike():
    torch.manual_seed(0)
    T, N, D, F, R = 40, 64, 16, 24, 10
    layer = make_layer(N, D, F, R, activation="swiglu")
    with FlopCounterMode(display=False) as counter:
        _, stats = layer(torch.randn(T, D), RouterContext())
    flops = layer.flops_per_token(stats)
    H = 2 * F
    assert flops == {"router": 2 * D * N, "experts": 2 * R * (N + D + H) + 2 * R * (N + F + D)}
    assert sum(flops.values()) == counter.get_total_flops() / T


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_parameters_are_the_formula_and_all_of_them_active(activation):
    N, D, F, R = 10, 8, 6, 3
    layer = make_layer(N, D, F, R, activation)
    H = 2 * F if activation == "swiglu" else F
    assert param_count(layer) == mumoe_param_count(N, D, F, activation, R)
    assert param_count(layer) == N * D + R * (2 * N + 2 * D + H + F)
    _, stats = layer(torch.randn(4, D), RouterContext())
    assert layer.active_params(stats) == param_count(layer)


@pytest.mark.parametrize("params", ["total", "active"])
def test_the_rank_rule_is_the_largest_rank_within_the_dense_layers_parameters(params):
    model = ModelConfig(name="tiny", d_model=128, d_ff=256)
    moe = MoEConfig(num_experts=8)
    cfg = MuMoEConfig(name="mumoe", num_experts=64, params=params)
    rank = matched_rank(cfg, model, moe)
    budget = (moe.num_experts if params == "total" else 1) * 2 * 128 * 256
    assert mumoe_param_count(64, 128, 256, "gelu", rank) <= budget
    assert mumoe_param_count(64, 128, 256, "gelu", rank + 1) > budget


def test_bad_options_fail_in_one_line_naming_the_key():
    model = ModelConfig(name="tiny", d_model=128, d_ff=256)
    cfg = MuMoEConfig(name="mumoe", num_experts=4096)  # the gate alone: 4096 x 128 = the 8 FFNs' 524,288
    with pytest.raises(ConfigError, match=r"router.num_experts=4096 .* or an explicit router.rank"):
        matched_rank(cfg, model, MoEConfig(num_experts=8))
    with pytest.raises(ConfigError, match="router.gate='sparsemax'"):
        MuMoEConfig(name="mumoe", gate="sparsemax")


def bisection_entmax15(z_N, steps=200):
    """p = [z / 2 - tau]_+^2 with sum 1, tau found by bisection: the definition."""
    lo, hi = (z_N.max() / 2 - 1).item(), (z_N.max() / 2).item()
    for _ in range(steps):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if (z_N / 2 - tau).clamp_min(0).square().sum() > 1 else (lo, tau)
    return (z_N / 2 - (lo + hi) / 2).clamp_min(0).square()


def test_entmax15_is_its_definition_sparse_and_differentiable():
    g = torch.Generator().manual_seed(0)
    scale_T1 = torch.tensor([0.1, 1, 3, 10, 30, 100], dtype=torch.double)[:, None]
    z_TN = torch.randn(6, 30, dtype=torch.double, generator=g) * scale_T1
    p_TN = entmax15(z_TN)
    for z_N, p_N in zip(z_TN, p_TN):
        torch.testing.assert_close(p_N, bisection_entmax15(z_N))
    torch.testing.assert_close(p_TN.sum(-1), torch.ones(6, dtype=torch.double))
    assert (p_TN[-1] > 0).sum() < 30 and (p_TN[0] > 0).sum() == 30  # sparse for spread logits only
    torch.testing.assert_close(entmax15(torch.zeros(1, 4)), torch.full((1, 4), 0.25))
    assert torch.autograd.gradcheck(entmax15, z_TN[:3].clone().requires_grad_())


def test_entmax15_equals_the_authors_package():
    entmax = pytest.importorskip("entmax")
    z_TN = torch.randn(50, 37, generator=torch.Generator().manual_seed(0), dtype=torch.double) * 5
    torch.testing.assert_close(entmax15(z_TN), entmax.entmax15(z_TN, dim=-1))


@pytest.mark.parametrize("gate", ["entmax15", "softmax"])
def test_loads_are_coefficient_mass_and_a_tokens_experts_its_nonzero_coefficients(gate):
    torch.manual_seed(0)
    T, N = 64, 32
    layer = make_layer(N, 8, 8, 4, gate=gate)
    torch.nn.init.normal_(layer.gate.weight_ND)
    x = torch.randn(T, 8)
    _, stats = layer(x, RouterContext())
    coef_TN, _ = layer.gate(x)
    torch.testing.assert_close(stats.routed_E, coef_TN.sum(0))
    torch.testing.assert_close(stats.routed_E.sum(), torch.tensor(float(T)))
    support_T = (coef_TN > 0).sum(-1)
    assert torch.equal(stats.experts_per_token_T, support_T)
    assert bool((support_T == N).all()) == (gate == "softmax")
    assert torch.equal(stats.top_expert_T, coef_TN.argmax(-1))
    acc = RoutingAccumulator()
    acc.add([stats])
    summary = acc.summary()
    assert summary["drop_rate"] == 0 and summary["no_expert_rate"] == 0
    assert math.isfinite(summary["load_cv"]) and summary["per_layer"][0]["load_E"] == stats.routed_E.tolist()


def test_a_mumoe_run_records_the_analytic_cost(make_config):
    cfg = make_config("router=mumoe", "router.num_experts=64", "trainer.max_steps=5", "trainer.eval_every=5",
                      "trainer.eval_batches=1", "task.oracle_baseline=false")
    record = json.loads(run(cfg).read_text())
    metrics = record["metrics"]
    assert record["status"] == "completed" and metrics["drop_rate"] == 0
    D, F, E, N = cfg.model.d_model, cfg.model.d_ff, cfg.moe.num_experts, 64
    rank = matched_rank(cfg.router, cfg.model, cfg.moe)
    assert metrics["active_params"] == metrics["total_params"]
    layers = cfg.model.n_layers
    assert metrics["flops_breakdown"]["experts"] == layers * 4 * rank * (N + D + F)
    # Parameter-matched: the parameters of every other router's E experts, within one rank's.
    assert 0 <= E * 2 * D * F - mumoe_param_count(N, D, F, "gelu", rank) < 2 * N + 2 * D + 2 * F
