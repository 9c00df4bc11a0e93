"""moebench's GShard top-2 router against st-moe-pytorch 0.1.8
(``st_moe_pytorch/st_moe_pytorch.py``: ``TopNGating`` with ``top_n=2``, and ``MoE``).

Compared, with the gate weights copied and the same random-routing uniforms
fed to both sides (``same_uniforms`` in conftest.py):

* the two experts per token and their weights g_i / (g1 + g2);
* the second-expert policy: dispatched iff u < g2 / threshold, the reference's
  ``threshold_train`` against moebench's ``second_policy="random"`` with
  ``second_threshold``;
* capacity: first choices before second choices, then position, within one
  sequence (the reference's group); which assignments are dropped;
* the layer output with moebench's expert weights inside the reference;
* the router z-loss (ST-MoE eq. 5) and the balance loss.

Defaults that differ on purpose, so every test sets both sides explicitly:

* Evaluation. The reference applies ``threshold_eval`` (random routing) at
  evaluation too; moebench's evaluation policy is its own setting. The tests
  run both sides in training mode with the policy set, and emulate "dispatch
  both" on the reference by a threshold of 1e-9 (g2 / 1e-9 > any uniform).
* Capacity. The reference's is ``max(4, min(T, int(T * cf / E)))``,
  moebench's ``ceil(cf * k * T / E)`` (GShard, Switch eq. 3); the factors are
  chosen so both give the same number.
* The balance loss. The reference's ``mask_1`` is a view of ``mask[0]``, which
  the capacity loop trims in place, so it counts only the first choices that
  fit; GShard's Algorithm 1 counts c_e before the capacity check, as
  mesh-tensorflow and moebench do (see test_mixture_of_experts.py). The losses
  are equal when nothing is dropped, and the last test pins the difference.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

st_moe = pytest.importorskip("st_moe_pytorch.st_moe_pytorch")

from moebench.moe.block import MoEBlock  # noqa: E402
from moebench.moe.dispatch import capacity, plan_dispatch  # noqa: E402
from moebench.moe.experts import Experts  # noqa: E402
from moebench.routers.base import RouterContext  # noqa: E402
from moebench.routers.top2 import Top2Config, Top2Router  # noqa: E402

T, E, D, F_HID = 32, 4, 16, 24
ALL = 1e-9  # a reference threshold that dispatches every second expert
TOL = dict(rtol=1e-5, atol=1e-6)


def moebench_router(policy: str, threshold: float = 0.2) -> Top2Router:
    """A top-2 router in training mode with its second-expert policy set and
    a gate sharp enough that second gates spread over (0, 0.5]."""
    cfg = Top2Config(name="top2", second_policy=policy, second_threshold=threshold,
                     balance_coef=1.0, z_loss_coef=1.0)
    router = Top2Router(cfg, D, E, None)
    with torch.no_grad():
        router.gate.weight.normal_(std=0.5)
    return router.train()


def reference_gate(router: Top2Router, threshold: float, cf: float):
    """``TopNGating`` with moebench's gate weight; ``cf`` for train and eval."""
    gate = st_moe.TopNGating(D, E, top_n=2, threshold_train=threshold, threshold_eval=threshold,
                             capacity_factor_train=cf, capacity_factor_eval=cf)
    with torch.no_grad():
        gate.to_gates.weight.copy_(router.gate.weight)  # both [E, D], no bias
    return gate.train()


def reference_capacity(cf: float) -> int:
    """``TopNGating``'s expert capacity for one sequence of T tokens."""
    return max(st_moe.MIN_EXPERT_CAPACITY, min(T, int(T * cf / E)))


def weights_TE(token_idx, expert_idx, weight) -> torch.Tensor:
    """A list of (token, expert, weight) assignments as a dense [T, E] matrix."""
    return torch.zeros(T, E).index_put((token_idx, expert_idx), weight.detach().float(), accumulate=True)


def reference_weights_TE(combine_BTEC: torch.Tensor) -> torch.Tensor:
    """The reference's combine tensor of one sequence, summed over capacity slots."""
    return combine_BTEC[0].sum(-1).detach()


def both_weights_TE(router, gate, same_uniforms) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's weight per expert from moebench and from the reference, on
    one random sequence and the same uniforms."""
    x_BTD = torch.randn(1, T, D)
    with same_uniforms(torch.rand(T)):
        routing = router(x_BTD[0], RouterContext(batch_shape=(1, T))).routing
        _, combine_BTEC, _, _ = gate(x_BTD)
    return (weights_TE(routing.token_idx_A, routing.expert_idx_A, routing.weight_A),
            reference_weights_TE(combine_BTEC))


def test_both_experts_and_their_weights_equal_the_reference(same_uniforms):
    """With every second expert kept, each token's two experts and weights
    g_i / (g1 + g2) equal ``TopNGating.forward``'s combine tensor."""
    torch.manual_seed(0)
    router = moebench_router("all")
    gate = reference_gate(router, threshold=ALL, cf=E)  # capacity T: nothing dropped
    ours_TE, theirs_TE = both_weights_TE(router, gate, same_uniforms)
    assert torch.equal(ours_TE > 0, theirs_TE > 0) and int((ours_TE > 0).sum()) == 2 * T
    torch.testing.assert_close(ours_TE, theirs_TE, **TOL)


@pytest.mark.parametrize("threshold", [0.2, 0.5])
def test_random_routing_keeps_the_second_experts_the_reference_keeps(same_uniforms, threshold):
    """GShard's random routing, u < g2 / threshold with the renormalized g2, on
    the same uniforms: the kept second experts and the weights (a token whose
    second is not dispatched keeps g1 / (g1 + g2)) equal the reference's
    ``should_route`` in ``TopNGating.forward``. 0.2 is mesh-tensorflow's
    default, 0.5 GShard Algorithm 1's "2 g2 > rnd"."""
    torch.manual_seed(1)
    router = moebench_router("random", threshold)
    gate = reference_gate(router, threshold, cf=E)
    ours_TE, theirs_TE = both_weights_TE(router, gate, same_uniforms)
    seconds_kept = int((theirs_TE > 0).sum()) - T
    assert 0 < seconds_kept < T  # the policy did drop some seconds and keep others
    assert torch.equal(ours_TE > 0, theirs_TE > 0)
    torch.testing.assert_close(ours_TE, theirs_TE, **TOL)


def test_capacity_drops_the_assignments_the_reference_drops(same_uniforms):
    """Under a binding capacity, moebench's dispatcher (moe/dispatch.py,
    ``drop_policy="position"``) keeps exactly the assignments of the
    reference's capacity loop: every first choice before any second one, then
    by position."""
    torch.manual_seed(2)
    router = moebench_router("random", 0.2)
    cf_ref, cf_ours = 0.75, 0.375
    C = capacity(T, E, 2, cf_ours)
    assert C == reference_capacity(cf_ref) == 6
    gate = reference_gate(router, 0.2, cf_ref)
    x_BTD = torch.randn(1, T, D)
    with same_uniforms(torch.rand(T)):
        routing = router(x_BTD[0], RouterContext(batch_shape=(1, T))).routing
        _, combine_BTEC, _, _ = gate(x_BTD)
    plan = plan_dispatch(routing, T, E, C, drop_policy="position")
    assert plan.dropped > 0
    ours_TE = weights_TE(plan.token_idx_R, plan.expert_idx_R, plan.weight_R)
    torch.testing.assert_close(ours_TE, reference_weights_TE(combine_BTEC), **TOL)


class FixedExpert(nn.Module):
    """moebench's expert e as a module the reference's ``Experts`` can call:
    gelu(x W_in) W_out, no bias (the reference's own ``Expert`` is a GEGLU)."""

    def __init__(self, w_in_DF: torch.Tensor, w_out_FD: torch.Tensor) -> None:
        super().__init__()
        self.w_in_DF = nn.Parameter(w_in_DF.detach().clone())
        self.w_out_FD = nn.Parameter(w_out_FD.detach().clone())

    def forward(self, x):
        return F.gelu(x @ self.w_in_DF) @ self.w_out_FD


def test_layer_output_equals_the_reference_moe(same_uniforms):
    """The MoE block's output (router, capacity, experts, combine) equals
    ``st_moe_pytorch.MoE`` holding the same gate and expert weights, under
    random routing and a binding capacity."""
    torch.manual_seed(3)
    router = moebench_router("random", 0.2)
    experts = Experts(E, D, F_HID, "gelu", impl="torch")
    block = MoEBlock(router, experts, k=2, capacity_factor=0.375, eval_capacity_factor=0.375,
                     dropless=False, drop_policy="position", routing_groups="all").train()
    reference = st_moe.MoE(
        D, num_experts=E, threshold_train=0.2, threshold_eval=0.2, capacity_factor_train=0.75,
        capacity_factor_eval=0.75, gating_top_n=2, is_distributed=False,
        experts=nn.ModuleList(FixedExpert(experts.w_in_EDH[e], experts.w_out_EFD[e]) for e in range(E)),
    ).train()
    with torch.no_grad():
        reference.gate.to_gates.weight.copy_(router.gate.weight)
    x_BTD = torch.randn(1, T, D)
    with same_uniforms(torch.rand(T)):
        y_BTD, stats = block(x_BTD, RouterContext(batch_shape=(1, T)))
        ref = reference(x_BTD)
    assert stats.dropped > 0  # the capacity binds
    torch.testing.assert_close(y_BTD, ref.outputs, **TOL)


def test_router_z_loss_equals_the_reference(same_uniforms):
    """ST-MoE eq. 5, mean_t logsumexp(logits_t)^2: moebench's ``z_loss``
    (routers/base.py) equals ``TopNGating``'s ``router_z_loss``."""
    torch.manual_seed(4)
    router = moebench_router("all")
    with torch.no_grad():
        router.gate.weight.mul_(4.0)  # logits far from 0, so the loss is not ~log(E)^2
    gate = reference_gate(router, ALL, cf=E)
    x_BTD = torch.randn(1, T, D)
    with same_uniforms(torch.rand(T)):
        aux = router(x_BTD[0], RouterContext(batch_shape=(1, T))).aux_losses
        _, _, _, z_ref = gate(x_BTD)
    assert float(z_ref.detach()) > 10
    torch.testing.assert_close(aux["z_loss"] / router.cfg.z_loss_coef, z_ref, **TOL)


def test_balance_loss_equals_the_reference_when_nothing_is_dropped(same_uniforms):
    """E^2 mean_e(f_e P_e) of ``TopNGating`` equals moebench's E sum_e f_e P_e
    (routers/top1.py ``switch_balance_loss`` on the first choices) when the
    capacity drops nothing."""
    torch.manual_seed(5)
    router = moebench_router("random", 0.2)
    gate = reference_gate(router, 0.2, cf=E)
    x_BTD = torch.randn(1, T, D)
    with same_uniforms(torch.rand(T)):
        aux = router(x_BTD[0], RouterContext(batch_shape=(1, T))).aux_losses
        _, _, balance_ref, _ = gate(x_BTD)
    torch.testing.assert_close(aux["balance"] / router.cfg.balance_coef, balance_ref, **TOL)


def test_reference_balance_loss_counts_only_the_first_choices_that_fit(same_uniforms):
    """Pins the one difference: under a binding capacity the reference's f_e
    counts the first choices kept by capacity (its ``mask_1`` aliases
    ``mask[0]``, trimmed in place), moebench's f_e all first choices, as
    GShard Algorithm 1 (c_e counted before the capacity check) and
    mesh-tensorflow's ``_top_2_gating`` do."""
    torch.manual_seed(6)
    router = moebench_router("all")
    gate = reference_gate(router, ALL, cf=0.75)
    x_BTD = torch.randn(1, T, D)
    with same_uniforms(torch.rand(T)):
        out = router(x_BTD[0], RouterContext(batch_shape=(1, T)))
        _, combine_BTEC, balance_ref, _ = gate(x_BTD)
    probs_TE = torch.softmax(out.logits_TE, -1)
    first_T = probs_TE.argmax(-1)
    all_first_E = torch.bincount(first_T, minlength=E).float() / T
    kept_T = reference_weights_TE(combine_BTEC)[torch.arange(T), first_T] > 0
    kept_first_E = torch.bincount(first_T[kept_T], minlength=E).float() / T
    assert not kept_T.all()
    P_E = probs_TE.mean(0).detach()
    torch.testing.assert_close(balance_ref, E * (kept_first_E * P_E).sum(), **TOL)
    torch.testing.assert_close(out.aux_losses["balance"] / router.cfg.balance_coef,
                               E * (all_first_E * P_E).sum(), **TOL)
    ours, theirs = float(out.aux_losses["balance"].detach()), float(balance_ref.detach())
    assert not math.isclose(ours, theirs, rel_tol=1e-3)
