"""PEER: exact product-key retrieval, the softmax-weighted sum of single-neuron
experts, sparse gradients of the retrieved rows only and an optimizer step that
touches only those rows, no [T, N] tensor at N = 1024^2."""

import json
import math

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from moebench.config import TrainerConfig
from moebench.metrics.routing import RoutingAccumulator
from moebench.moe.peer import PEERLayer, peer_output, retrieval_stats
from moebench.optim import LazyAdam
from moebench.routers.base import RouterContext
from moebench.routers.peer import PeerConfig, ProductKeyRouter, product_key_topk
from moebench.run import run
from moebench.train import clip_grad_norm, grads_finite, make_optimizer


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


def used_rows(expert, num_rows):
    used_N = torch.zeros(num_rows, dtype=torch.bool)
    used_N[expert.flatten()] = True
    return used_N


def test_gradients_reach_exactly_the_retrieved_rows_and_their_subkeys():
    torch.manual_seed(0)
    Q = 8
    layer = make_layer(Q**2, 8, heads=2, k=3, d_key=6)
    x = torch.randn(16, 8)
    weight, expert = layer.router(x)
    y, _ = layer(x, RouterContext())
    (y * torch.randn_like(y)).sum().backward()

    used_N = used_rows(expert, Q**2)
    for table in (layer.down_ND, layer.up_ND):
        # Sparse: the retrieved rows only, each once (coalesced), no N-row tensor.
        assert table.grad.is_sparse and table.grad.is_coalesced()
        assert torch.equal(table.grad.indices()[0], used_N.nonzero().squeeze(1))
        assert torch.all(table.grad.values().abs().sum(-1) > 0)
    for half, row_of in ((0, expert // Q), (1, expert % Q)):
        used_Q = used_rows(row_of, Q)
        grad_QP = layer.router.subkeys_2QP.grad[half]
        assert torch.all(grad_QP[used_Q].abs().sum(-1) > 0)
        assert torch.all(grad_QP[~used_Q] == 0)


def test_gradients_equal_those_of_the_dense_formula():
    """peer_output's own backward (sparse table gradients, embedding_bag) against
    autograd through the plain formula with dense gathers, in float64."""
    g = torch.Generator().manual_seed(0)
    T, D, H, K, N = 10, 6, 3, 4, 50
    leaves = [torch.randn(T, D, dtype=torch.double, generator=g),
              torch.rand(T, H, K, dtype=torch.double, generator=g),
              torch.randn(N, D, dtype=torch.double, generator=g),
              torch.randn(N, D, dtype=torch.double, generator=g)]
    expert = torch.randint(0, N, (T, H, K), generator=g)  # repeats within a token, too
    grad_y = torch.randn(T, D, dtype=torch.double, generator=g)

    def grads(formula):
        xs = [leaf.clone().requires_grad_() for leaf in leaves]
        formula(xs[0], xs[1], expert, xs[2], xs[3]).backward(grad_y)
        return [x.grad.to_dense() for x in xs]

    def dense(x, weight, expert, down, up):
        h = F.gelu(torch.einsum("thkd,td->thk", down[expert], x))
        return torch.einsum("thk,thkd->td", weight * h, up[expert])

    for got, want in zip(grads(peer_output), grads(dense)):
        torch.testing.assert_close(got, want)


def peer_model():
    """A PEER layer beside an ordinary linear layer, as in a model."""
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"peer": make_layer(8**2, 8, heads=2, k=3, d_key=6),
                                "other": torch.nn.Linear(8, 8)})


def model_loss(model, x):
    y, _ = model["peer"](x, RouterContext())
    return model["other"](y).square().mean()


def test_an_optimizer_step_changes_only_the_retrieved_rows():
    model = peer_model()
    trainer = TrainerConfig(lr=0.1, weight_decay=0.5)
    optimizer = make_optimizer(model, trainer)
    peer = model["peer"]
    tables = {"down_ND": peer.down_ND, "up_ND": peer.up_ND}
    # The tables get lazy Adam; every other parameter AdamW, with weight decay on matrices.
    adamw, lazy = optimizer.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(lazy, LazyAdam)
    assert [p for g in lazy.param_groups for p in g["params"]] == list(tables.values())
    decayed = adamw.param_groups[0]
    assert decayed["weight_decay"] == 0.5
    assert {id(p) for p in decayed["params"]} == {
        id(p) for p in model.parameters() if p.dim() >= 2 and all(p is not t for t in tables.values())}
    assert len(optimizer.param_groups) == 3  # the training loop sets each group's learning rate

    x = torch.randn(16, 8)
    with torch.no_grad():
        used_N = used_rows(peer.router(x)[1], 8**2)
    assert 0 < used_N.sum() < 8**2
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.zero_grad(set_to_none=True)
    model_loss(model, x).backward()
    clip_grad_norm(model, 1e-3)
    optimizer.step()
    for name, table in tables.items():
        old = before[f"peer.{name}"]
        assert torch.equal(table[~used_N], old[~used_N])  # bit-identical
        assert torch.all((table[used_N] != old[used_N]).any(-1))
    for state in lazy.state.values():
        assert torch.all(state["exp_avg"][~used_N] == 0) and torch.all(state["exp_avg_sq"][~used_N] == 0)
    # Weight decay reaches the other matrices: a first step on zero gradients only decays.
    fresh = make_optimizer(model, trainer)
    other = model["other"].weight
    fresh.zero_grad(set_to_none=True)
    other.grad = torch.zeros_like(other)
    other_before = other.detach().clone()
    fresh.step()
    torch.testing.assert_close(other, other_before * (1 - 0.1 * 0.5))


def test_lazy_adam_is_adam_on_rows_retrieved_every_step():
    """A row present in every gradient follows AdamW (weight_decay=0) exactly."""
    g = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(6, 3, dtype=torch.double, generator=g))
    dense = torch.nn.Parameter(table.detach()[[1, 4]].clone())
    lazy = LazyAdam([table], lr=0.01, betas=(0.9, 0.95))
    adamw = torch.optim.AdamW([dense], lr=0.01, betas=(0.9, 0.95), weight_decay=0.0)
    for _ in range(5):
        grad = torch.randn(2, 3, dtype=torch.double, generator=g)
        table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), grad, table.shape, check_invariants=True)
        dense.grad = grad.clone()
        lazy.step()
        adamw.step()
    torch.testing.assert_close(table.detach()[[1, 4]], dense.detach())


def test_clipping_and_the_nan_check_see_sparse_gradients():
    model = peer_model()
    x = torch.randn(16, 8)
    model_loss(model, x).backward()
    dense_grads = [p.grad.to_dense().clone() for p in model.parameters()]
    total = torch.cat([g.flatten() for g in dense_grads]).norm()
    clip_grad_norm(model, float(total) / 4)
    for p, g in zip(model.parameters(), dense_grads):
        torch.testing.assert_close(p.grad.to_dense(), g / 4, rtol=1e-4, atol=1e-7)
    assert model["peer"].up_ND.grad.is_coalesced()  # the optimizer reads it as is
    assert grads_finite(model)
    model["peer"].up_ND.grad.values()[0, 0] = float("nan")
    assert not grads_finite(model)


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
    # The counter sees matmuls only: the k^2 candidate sums are additions, and
    # of the experts' two multiply-adds per width, g gelu(u . x) v runs in
    # embedding_bag; u . x is a matmul.
    assert flops.pop("candidate_merge") == H * K * K
    flops["experts"] /= 2
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


def test_a_peer_run_trains_without_skipped_steps(make_config):
    """The training loop end to end: lazy Adam beside AdamW, clipping and the NaN
    check on sparse gradients, the learning-rate schedule on both optimizers."""
    cfg = make_config("router=peer", "router.num_experts=1024", "router.heads=2", "router.experts_per_head=4",
                      "trainer.max_steps=30", "trainer.eval_every=30", "trainer.eval_batches=2",
                      "task.oracle_baseline=false")
    record = json.loads(run(cfg).read_text())
    assert record["status"] == "completed"
    assert record["metrics"]["skipped_steps"] == 0 and math.isfinite(record["metrics"]["val_loss"])


def test_clipping_of_dense_gradients_is_torch_clip_grad_norm_bit_for_bit():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(32, 8)
    for model in models:
        model(x).square().sum().backward()
    clip_grad_norm(models[0], 0.5)
    torch.nn.utils.clip_grad_norm_(models[1].parameters(), 0.5)
    for mine, torchs in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(mine.grad, torchs.grad)
