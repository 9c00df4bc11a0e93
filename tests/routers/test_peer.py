"""PEER: exact product-key retrieval, the softmax-weighted sum of single-neuron
experts, gradients into the retrieved rows only, no [T, N] tensor at N = 1024^2."""

import math

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from moebench.metrics.routing import RoutingAccumulator
from moebench.moe.peer import PEERLayer, retrieval_stats
from moebench.routers.base import RouterContext
from moebench.routers.peer import PeerConfig, ProductKeyRouter, product_key_topk


def make_layer(num_experts: int, d_model: int, heads: int, k: int, d_key: int) -> PEERLayer:
    cfg = PeerConfig(name="peer", num_experts=num_experts, heads=heads, experts_per_head=k, d_key=d_key)
    return PEERLayer(ProductKeyRouter(cfg, d_model), num_experts, d_model)


def all_keys(keys1_QP, keys2_QP):
    """The N = Q^2 full keys [c_i; c'_j], row i * Q + j."""
    Q = keys1_QP.shape[0]
    return torch.cat([keys1_QP.repeat_interleave(Q, 0), keys2_QP.repeat(Q, 1)], dim=1)


def brute_force_topk(q_THD, keys1_QP, keys2_QP, k):
    return (q_THD @ all_keys(keys1_QP, keys2_QP).t()).topk(k, dim=-1)


def test_product_keys_return_the_brute_force_topk_over_all_combined_keys():
    g = torch.Generator().manual_seed(0)
    T, H, Q, P, K = 40, 3, 16, 4, 7
    q1, q2 = torch.randn(T, H, P, generator=g), torch.randn(T, H, P, generator=g)
    keys1, keys2 = torch.randn(Q, P, generator=g), torch.randn(Q, P, generator=g)
    score, expert = product_key_topk(q1, q2, keys1, keys2, K)
    ref = brute_force_topk(torch.cat([q1, q2], -1), keys1, keys2, K)
    assert torch.equal(expert, ref.indices)
    torch.testing.assert_close(score, ref.values)


def test_output_is_the_softmax_weighted_sum_of_retrieved_neurons_over_heads():
    torch.manual_seed(0)
    T, D, H, K = 12, 8, 3, 4
    layer = make_layer(8**2, D, H, K, d_key=6).double().eval()
    x = torch.randn(T, D, dtype=torch.double)
    y, _ = layer(x, RouterContext())

    q = layer.router.query_norm(layer.router.query(x)).view(T, H, 6)
    keys1, keys2 = layer.router.subkeys_2QP
    ref = torch.zeros_like(x)
    for t in range(T):
        for h in range(H):
            score, expert = brute_force_topk(q[t, h], keys1, keys2, K)
            for g, i in zip(torch.softmax(score, -1), expert):
                ref[t] += g * F.gelu(layer.down_ND[i] @ x[t]) * layer.up_ND[i]
    torch.testing.assert_close(y, ref)


def test_gradients_reach_exactly_the_retrieved_rows_and_their_subkeys():
    torch.manual_seed(0)
    Q = 8
    layer = make_layer(Q**2, 8, heads=2, k=3, d_key=6)
    x = torch.randn(16, 8)
    weight, expert = layer.router(x)
    y, _ = layer(x, RouterContext())
    (y * torch.randn_like(y)).sum().backward()

    used_N = torch.zeros(Q**2, dtype=torch.bool)
    used_N[expert.flatten()] = True
    for table in (layer.down_ND, layer.up_ND):
        assert torch.all(table.grad[used_N].abs().sum(-1) > 0)
        assert torch.all(table.grad[~used_N] == 0)
    for half, row_of in ((0, expert // Q), (1, expert % Q)):
        used_Q = torch.zeros(Q, dtype=torch.bool)
        used_Q[row_of.flatten()] = True
        grad_QP = layer.router.subkeys_2QP.grad[half]
        assert torch.all(grad_QP[used_Q].abs().sum(-1) > 0)
        assert torch.all(grad_QP[~used_Q] == 0)


class LargeOutputs(TorchDispatchMode):
    """Records the shape of every tensor an op produces with >= ``numel`` elements."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.shapes = numel, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() >= self.numel:
                self.shapes.add(tuple(t.shape))
        return out


def test_a_million_experts_form_no_tensor_beyond_the_tables():
    N, D, T, H = 1024**2, 16, 32, 2
    torch.manual_seed(0)
    layer = make_layer(N, D, heads=H, k=4, d_key=16)
    x = torch.randn(T, D)
    with LargeOutputs(numel=N) as probe:
        y, stats = layer(x, RouterContext())
        y.square().sum().backward()
    # Beyond the sub-key scores [T, H, sqrt(N)], only table-sized tensors: the
    # gradients of the u and v tables and the usage counts, never [T, N].
    assert probe.shapes <= {(N, D), (N,)}
    assert stats.routed_E.shape == (N,) and int(stats.routed_E.sum()) == T * H * 4

    # The probe does see a [T, N] product: brute-force scoring of all N keys.
    q = layer.router.query(x).view(T, H, 16)
    with LargeOutputs(numel=N) as probe:
        brute_force_topk(q, *layer.router.subkeys_2QP, 4)
    assert (T, H, N) in probe.shapes


def test_analytic_flops_match_the_flop_counter():
    torch.manual_seed(0)
    T, H, K = 50, 4, 8
    layer = make_layer(64**2, 32, heads=H, k=K, d_key=16)
    with FlopCounterMode(display=False) as counter:
        _, stats = layer(torch.randn(T, 32), RouterContext())
    flops = layer.flops_per_token(stats)
    # The counter sees matmuls only; the k^2 candidate sums are additions.
    assert flops.pop("candidate_merge") == H * K * K
    assert sum(flops.values()) == counter.get_total_flops() / T


def test_usage_over_a_million_experts_and_a_record_without_per_expert_lists():
    N, T, H, K = 1024**2, 64, 2, 4
    expert_THK = torch.arange(T * H * K).view(T, H, K) % 256  # 256 experts, used evenly
    acc = RoutingAccumulator(keep_tokens=True)
    acc.add([retrieval_stats(torch.rand(T, H, K), expert_THK, N)],
            RouterContext(token_ids_T=torch.arange(T), cluster_ids_T=torch.arange(T) % 4))
    summary = acc.summary()
    assert summary["expert_usage"] == 256 / N
    torch.testing.assert_close(summary["usage_kl_uniform"], math.log(N / 256))
    assert summary["experts_per_token_share"] == [0.0] * (H * K) + [1.0]
    lists = [v for part in (summary, *summary["per_layer"]) for v in part.values() if isinstance(v, list)]
    assert all(len(v) < 1024 for v in lists)


def test_retrieval_stays_float32_under_bfloat16_autocast():
    # In bfloat16 the scores of close keys tie or swap: the retrieval is computed
    # in float32 whatever the model's dtype, as every router's gate.
    torch.manual_seed(0)
    layer = make_layer(32**2, 32, heads=4, k=8, d_key=16).eval()
    x = torch.randn(64, 32)
    weight, expert = layer.router(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight_bf16, expert_bf16 = layer.router(x)
    assert weight_bf16.dtype == torch.float32
    assert torch.equal(expert_bf16, expert) and torch.equal(weight_bf16, weight)
