"""moebench's PEER retrieval and layer against PEER-pytorch 0.2.2
(``PEER_pytorch/PEER.py``: ``PEER``).

Compared, with the query network, the sub-keys and the u, v tables copied:

* product-key retrieval (routers/peer.py ``product_key_topk``): per token and
  head, the top k of q1.c_i + q2.c'_j, indices i * sqrt(N) + j and scores,
  against the reference's ``sim.topk``, ``all_scores.topk`` and
  ``all_indices.gather``;
* the router weights, a softmax over each head's k scores;
* the layer output sum_h sum_i g_i gelu(u_i . x) v_i (moe/peer.py).

Differences on purpose, set alike here:

* Sub-keys. The paper's heads "share the same pool of experts with the same
  set of product keys" (He 2024, section 2), as moebench does; the
  reference holds one set of keys per head. Every head of the reference gets
  moebench's shared sub-keys.
* Scores. The reference defaults to ``non_competing_scores=True``: one expert
  per head, weighted by ReLU of its score (after Csordas et al. 2023). The
  paper, and moebench, keep k experts per head, weighted by a softmax over
  their k scores; the reference does that with ``non_competing_scores=False``.
* Query BatchNorm. moebench batch-normalizes the queries (the paper's
  ablation, after PKM); the reference does not. At evaluation the BatchNorm
  is a per-channel scale (running mean and bias 0 here), folded into the
  reference's query weight; training-mode batch statistics are not compared.
* Query layout. The reference's query projection is laid out (half, head,
  d), moebench's (head, half, d); the rows are permuted when copied.
"""

import pytest
import torch

peer_ref = pytest.importorskip("PEER_pytorch.PEER")

from moebench.moe.peer import PEERLayer  # noqa: E402
from moebench.routers.peer import PeerConfig, ProductKeyRouter, product_key_topk  # noqa: E402

T, D, H, K = 24, 32, 4, 8
Q = 16  # sub-keys per table: N = Q^2 = 256 experts
P = 8  # half a query: d_key = 2 P
N = Q * Q
TOL = dict(rtol=1e-5, atol=1e-5)


def make_pair() -> tuple[PEERLayer, torch.nn.Module]:
    """moebench's PEER layer (evaluation mode, a non-trivial query BatchNorm)
    and the reference ``PEER`` holding the same parameters."""
    cfg = PeerConfig(name="peer", num_experts=N, heads=H, experts_per_head=K, d_key=2 * P)
    layer = PEERLayer(ProductKeyRouter(cfg, D), N, D).eval()
    reference = peer_ref.PEER(D, heads=H, num_experts=N, num_experts_per_head=K, dim_key=P,
                              non_competing_scores=False, pre_rmsnorm=False).eval()
    router, norm = layer.router, layer.router.query_norm
    with torch.no_grad():
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        assert not norm.running_mean.any() and not norm.bias.any()
        scale_C = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # BatchNorm at evaluation
        query_CD = router.query.weight * scale_C[:, None]  # rows (head, half, d)
        reference.to_queries[0].weight.copy_(
            query_CD.view(H, 2, P, D).transpose(0, 1).reshape(2 * H * P, D))  # rows (half, head, d)
        reference.keys.copy_(router.subkeys_2QP.permute(1, 0, 2).expand(H, Q, 2, P))  # [H, Q, 2, P]
        reference.weight_down_embed.weight.copy_(layer.down_ND)
        reference.weight_up_embed.weight.copy_(layer.up_ND)
    return layer, reference


def run_reference(reference, x_TD: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference's output, and what it retrieved and weighted, recorded by
    hooks: the indices into its tables and its scores before and after the
    softmax."""
    seen = {}

    def record_experts(module, args, out):  # weight_down_embed(indices); returns None: output kept
        seen["expert_THK"] = args[0][0]

    def record_scores(module, args, out):  # score_activation(scores)
        seen.update(score_THK=args[0][0], weight_THK=out[0])

    hooks = [reference.weight_down_embed.register_forward_hook(record_experts),
             reference.score_activation.register_forward_hook(record_scores)]
    with torch.no_grad():
        seen["y_TD"] = reference(x_TD[None])[0]
    for hook in hooks:
        hook.remove()
    return seen


def test_product_key_retrieval_equals_the_reference():
    """``product_key_topk`` on moebench's queries gives the reference's
    experts (i * Q + j, in the same descending order) and scores."""
    torch.manual_seed(0)
    layer, reference = make_pair()
    x_TD = torch.randn(T, D)
    router = layer.router
    with torch.no_grad():
        q1_THP, q2_THP = router.query_norm(router.query(x_TD)).view(T, H, 2, P).unbind(2)
        score_THK, expert_THK = product_key_topk(
            q1_THP, q2_THP, router.subkeys_2QP[0], router.subkeys_2QP[1], K)
    seen = run_reference(reference, x_TD)
    assert torch.equal(expert_THK, seen["expert_THK"])
    torch.testing.assert_close(score_THK, seen["score_THK"], **TOL)


def test_router_weights_equal_the_reference():
    """The router's forward (query, BatchNorm, retrieval, softmax over each
    head's k scores) gives the reference's experts and weights."""
    torch.manual_seed(1)
    layer, reference = make_pair()
    x_TD = torch.randn(T, D)
    with torch.no_grad():
        weight_THK, expert_THK = layer.router(x_TD)
    seen = run_reference(reference, x_TD)
    assert torch.equal(expert_THK, seen["expert_THK"])
    torch.testing.assert_close(weight_THK, seen["weight_THK"], **TOL)


def test_layer_output_equals_the_reference():
    """The PEER layer's output, sum over heads and retrieved experts of
    g_i gelu(u_i . x) v_i, equals ``PEER.forward``'s."""
    torch.manual_seed(2)
    layer, reference = make_pair()
    x_BLD = torch.randn(2, T // 2, D)
    with torch.no_grad():
        y_BLD, stats = layer(x_BLD, None)
    seen = run_reference(reference, x_BLD.reshape(T, D))
    assert int(stats.routed_E.sum()) == T * H * K
    torch.testing.assert_close(y_BLD.reshape(T, D), seen["y_TD"], **TOL)
