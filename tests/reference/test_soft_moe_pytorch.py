"""moebench's Soft MoE router and block against soft-moe-pytorch 0.1.9
(``soft_moe_pytorch/soft_moe.py``: ``SoftMoE``).

Compared, with the slot parameters Phi and the expert weights copied:

* the dispatch weights, softmax over the tokens of each sequence of the
  logits X . Phi, one column per slot (paper eq. 1);
* the combine weights, softmax over all E * S slots for each token (eq. 3);
* the layer output Y = C . Expert(D^T X), slot n going to expert n // S.

The reference routes each sequence of a batch as its own group. The tests
feed moebench one sequence at a time, which holds whatever its grouping; one
test also feeds the whole batch, once moebench groups per sequence
(``SoftRouting.dispatch_GLN``), and is skipped before. S is set on both sides
(the reference's default, seq_len // E).

Differences on purpose, set alike here:

* Logit scale. The paper (section 2.3) l2-normalizes X and Phi and multiplies
  by one learned scalar; moebench does that. The reference RMS-normalizes
  both with learned per-feature gains: logits = (sqrt(D) g_x * x^) .
  (sqrt(D) g_phi * phi^), which is moebench's with scale = D g_x g_phi when
  each gain is a constant vector, as set here.
* What the slots mix. The reference mixes the *normalized* tokens into the
  slots (``slots = einsum(x, dispatch)`` after ``x = self.norm(x)``); moebench
  mixes the layer's input tokens, normalizing only for the logits, as the
  official implementation does (google-research/vmoe,
  ``vmoe/projects/soft_moe/router.py``: the router normalizes its own copy of
  the inputs; the dispatcher then mixes the layer's inputs). Moebench's routing
  does not change when a token is rescaled, so moebench on the reference's
  normalized tokens sqrt(D) g_x x^ must give the reference's output on x.
"""

import math

import pytest
import torch
from torch import nn

soft_moe = pytest.importorskip("soft_moe_pytorch.soft_moe")

from moebench.moe.block import MoEBlock  # noqa: E402
from moebench.moe.experts import Experts  # noqa: E402
from moebench.routers.base import RouterContext, SoftRouting  # noqa: E402
from moebench.routers.soft import SoftConfig, SoftRouter  # noqa: E402

B, T, E, D = 2, 16, 4, 16
S = T // E  # slots per expert: the reference's default, seq_len // num_experts
F_HID = 2 * D  # the reference's expert width is expert_mult * D
GAIN_X, GAIN_PHI = 1.5, 0.5  # the reference's RMSNorm gains, as constants
TOL = dict(rtol=1e-5, atol=1e-6)


def make_pair() -> tuple[MoEBlock, nn.Module]:
    """moebench's Soft MoE block and the reference ``SoftMoE`` holding the
    same slot parameters, logit scale and expert weights."""
    router = SoftRouter(SoftConfig(name="soft", slots_per_expert=S), D, E, None)
    experts = Experts(E, D, F_HID, "gelu", impl="torch")
    block = MoEBlock(router, experts, k=1, capacity_factor=1.0, eval_capacity_factor=1.0,
                     dropless=False, drop_policy="position", routing_groups="all")
    reference = soft_moe.SoftMoE(D, seq_len=T, num_experts=E, expert_mult=F_HID // D,
                                 is_distributed=False, offload_unused_experts_to_cpu=False)
    assert reference.slot_embeds.shape == (E, S, D)
    with torch.no_grad():
        router.scale.fill_(D * GAIN_X * GAIN_PHI)  # sqrt(D) g_x * sqrt(D) g_phi
        reference.norm.gamma.fill_(GAIN_X)
        reference.slot_norm.gamma.fill_(GAIN_PHI)
        reference.slot_embeds.copy_(router.slots_DN.t().reshape(E, S, D))  # slot n = e * S + s
        for e, expert in enumerate(reference.experts.experts):
            linear_in, linear_out = expert[0], expert[-1]
            linear_in.weight.copy_(experts.w_in_EDH[e].t())
            linear_out.weight.copy_(experts.w_out_EFD[e].t())
            linear_in.bias.zero_()  # moebench's experts have no biases
            linear_out.bias.zero_()
    return block, reference


def one_group_TN(routing) -> tuple[torch.Tensor, torch.Tensor]:
    """(dispatch, combine) as [T, N] for a call on one sequence: moebench's
    ``SoftRouting`` holds ``dispatch_GLN`` with per-sequence groups, and held
    ``dispatch_TN`` (one group) before them."""
    if hasattr(routing, "dispatch_GLN"):
        assert routing.dispatch_GLN.shape[0] == 1
        return routing.dispatch_GLN[0], routing.combine_GLN[0]
    return routing.dispatch_TN, routing.combine_TN


def tokens_BTD() -> torch.Tensor:
    """Random tokens with row norms spread over two orders of magnitude."""
    return torch.randn(B, T, D) * torch.logspace(-1, 1, B * T).view(B, T, 1)


def test_dispatch_and_combine_weights_equal_the_reference(monkeypatch):
    """Per sequence, moebench's ``dispatch_TN`` (softmax over tokens) and
    ``combine_TN`` (softmax over slots) equal the two softmaxes that
    ``SoftMoE.forward`` takes (``dispatch_weights``, ``combine_weights``),
    recorded as it runs."""
    torch.manual_seed(0)
    block, reference = make_pair()
    x_BTD = tokens_BTD()
    softmaxes = []
    original_softmax = torch.Tensor.softmax

    def recording_softmax(self, *args, **kwargs):
        out = original_softmax(self, *args, **kwargs)
        softmaxes.append(out.detach())
        return out

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "softmax", recording_softmax)
        with torch.no_grad():
            reference(x_BTD)
    dispatch_BTES, combine_BTN = softmaxes
    for b in range(B):
        routing = block.router(x_BTD[b], RouterContext(batch_shape=(1, T))).routing
        dispatch_TN, combine_TN = one_group_TN(routing)
        torch.testing.assert_close(dispatch_TN, dispatch_BTES[b].reshape(T, E * S), **TOL)
        torch.testing.assert_close(combine_TN, combine_BTN[b], **TOL)


def test_layer_output_equals_the_reference_on_its_normalized_tokens():
    """moebench's block on the tokens as the reference's RMSNorm leaves them,
    sqrt(D) g_x x / |x|, equals ``SoftMoE.forward`` on x: the same dispatch,
    experts and combine; the reference only mixes normalized tokens (see the
    module docstring)."""
    torch.manual_seed(1)
    block, reference = make_pair()
    x_BTD = tokens_BTD()
    normalized_BTD = math.sqrt(D) * GAIN_X * nn.functional.normalize(x_BTD, dim=-1)
    y_ref_BTD = reference(x_BTD)
    for b in range(B):
        y_TD, stats = block(normalized_BTD[b], RouterContext(batch_shape=(1, T)))
        assert stats.expert_rows == E * S
        torch.testing.assert_close(y_TD, y_ref_BTD[b], **TOL)


def test_a_batch_routes_each_sequence_as_its_own_group_as_the_reference():
    """The whole batch in one call (``RouterContext.batch_shape = (B, T)``):
    each sequence is its own group, as in ``SoftMoE.forward`` (softmax over
    ``n`` per batch element ``b``), so the output equals the reference's."""
    if "dispatch_GLN" not in SoftRouting.__dataclass_fields__:
        pytest.skip("this moebench routes all T tokens of a call as one Soft MoE group")
    torch.manual_seed(3)
    block, reference = make_pair()
    x_BTD = tokens_BTD()
    normalized_BTD = math.sqrt(D) * GAIN_X * nn.functional.normalize(x_BTD, dim=-1)
    y_BTD, stats = block(normalized_BTD, RouterContext(batch_shape=(B, T)))
    assert stats.expert_rows == B * E * S
    torch.testing.assert_close(y_BTD, reference(x_BTD), **TOL)


def test_moebench_mixes_the_input_tokens_not_the_normalized_ones():
    """Pins the difference: on tokens of other norms the outputs differ,
    because moebench's slots are mixes of the input tokens (vmoe's Soft MoE)
    and the reference's of the RMS-normalized ones."""
    torch.manual_seed(2)
    block, reference = make_pair()
    x_BTD = tokens_BTD()
    y_TD, _ = block(x_BTD[0], RouterContext(batch_shape=(1, T)))
    assert not torch.allclose(y_TD, reference(x_BTD)[0], **TOL)
