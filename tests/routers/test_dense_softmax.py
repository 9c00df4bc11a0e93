"""Dense softmax: every token through every expert, weighted by the softmax gate."""

import torch

from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts, activate
from moebench.routers.base import RouterContext
from moebench.routers.dense_softmax import DenseSoftmaxConfig, DenseSoftmaxRouter


def test_output_is_the_softmax_weighted_sum_of_all_experts_and_nothing_drops():
    torch.manual_seed(0)
    T, D, E = 24, 16, 4
    router = DenseSoftmaxRouter(DenseSoftmaxConfig(name="dense_softmax", k=E), D, E, None)
    # Capacity 1 per expert if it applied: dense softmax must be dropless regardless.
    block = MoEBlock(router, Experts(E, D, 32, "gelu"), k=1, capacity_factor=0.1,
                     eval_capacity_factor=0.1, dropless=False, drop_policy="position")
    x = torch.randn(T, D)
    y, stats = block(x, RouterContext())
    assert stats.dropped == 0 and stats.experts_per_token_T.tolist() == [E] * T
    probs_TE = torch.softmax(router.gate_logits(x), -1).double()
    w_in, w_out = block.experts.w_in_EDH.double(), block.experts.w_out_EFD.double()
    expected = sum(probs_TE[:, e : e + 1] * (activate(x.double() @ w_in[e], "gelu") @ w_out[e])
                   for e in range(E))
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-5)
