"""moebench's GShard top-2 router against mixture-of-experts 0.2.3
(``mixture_of_experts/mixture_of_experts.py``: ``Top2Gating`` and ``MoE``).

Despite its PyPI summary ("Sparsely-Gated Mixture of Experts"), this package
holds no noisy top-k gating (Shazeer et al. 2017): its gate is a line-by-line
transcription of mesh-tensorflow's ``_top_2_gating`` (GShard), with
``second_policy`` all | none | threshold | random. So it is a second top-2
reference, the one closest to the code GShard's results come from; moebench's
``noisy_topk`` has no pure-PyTorch reference among these packages.

Compared, with the gate and expert weights copied and the same
random-routing uniforms on both sides (``same_uniforms`` in conftest.py):

* the policies both implement: ``all``, and ``random`` (u < g2 / threshold,
  with g2 renormalized over the two) at mesh-tensorflow's threshold 0.2;
* capacity: first choices before second, then position, in one sequence;
* the balance loss, E^2 mean_e(f_e P_e) with f_e over all first choices
  (counted before capacity, as GShard Algorithm 1), here under a binding
  capacity, where st-moe-pytorch differs (see test_st_moe_pytorch.py);
* the layer output, the reference's ``Experts`` holding moebench's weights
  (the same [E, D, F] and [E, F, D] layout, GELU).

Defaults that differ on purpose, set alike in every test: the reference's
evaluation policy is ``random`` (moebench's evaluation policy is its own
setting, so the tests run both in training mode with the policy given); its
capacity is ``max(4, min(T, int(T * cf / E)))`` against moebench's
``ceil(cf * k * T / E)``, so the factors are chosen to give the same C; it
divides by g1 + g2 + 1e-9 (within tolerance).
"""

import pytest
import torch
from torch import nn

moe_ref = pytest.importorskip("mixture_of_experts.mixture_of_experts")

from moebench.moe.block import MoEBlock  # noqa: E402
from moebench.moe.dispatch import capacity, plan_dispatch  # noqa: E402
from moebench.moe.experts import Experts  # noqa: E402
from moebench.routers.base import RouterContext  # noqa: E402
from moebench.routers.top2 import Top2Config, Top2Router  # noqa: E402

T, E, D, F_HID = 32, 4, 16, 24
CF_REF, CF_OURS = 0.75, 0.375  # both give C = 6 for T = 32, E = 4, k = 2
TOL = dict(rtol=1e-5, atol=1e-6)


def moebench_router(policy: str) -> Top2Router:
    """A top-2 router in training mode, its policy set, threshold 0.2."""
    cfg = Top2Config(name="top2", second_policy=policy, second_threshold=0.2, balance_coef=1.0)
    router = Top2Router(cfg, D, E, None)
    with torch.no_grad():
        router.gate.weight.normal_(std=0.5)
    return router.train()


def reference_gate(router: Top2Router, policy: str, cf: float):
    """``Top2Gating`` with moebench's gate weight (stored transposed, [D, E])."""
    gate = moe_ref.Top2Gating(D, E, second_policy_train=policy, second_policy_eval=policy,
                              second_threshold_train=0.2, second_threshold_eval=0.2,
                              capacity_factor_train=cf, capacity_factor_eval=cf)
    with torch.no_grad():
        gate.w_gating.copy_(router.gate.weight.t())
    return gate.train()


def weights_TE(token_idx, expert_idx, weight) -> torch.Tensor:
    """A list of (token, expert, weight) assignments as a dense [T, E] matrix."""
    return torch.zeros(T, E).index_put((token_idx, expert_idx), weight.detach().float(), accumulate=True)


@pytest.mark.parametrize("policy", ["all", "random"])
def test_kept_assignments_and_weights_equal_the_reference_under_capacity(same_uniforms, policy):
    """Per token, the experts kept after the second-expert policy and a binding
    capacity, and their weights, equal ``Top2Gating.forward``'s combine
    tensor: the routing rule (routers/top2.py ``top2_routing``) followed by
    moebench's dispatcher (moe/dispatch.py, ``drop_policy="position"``)."""
    torch.manual_seed(10)
    router = moebench_router(policy)
    gate = reference_gate(router, policy, CF_REF)
    C = capacity(T, E, 2, CF_OURS)
    assert C == max(moe_ref.MIN_EXPERT_CAPACITY, min(T, int(T * CF_REF / E)))
    x_BTD = torch.randn(1, T, D)
    with same_uniforms(torch.rand(T)):
        routing = router(x_BTD[0], RouterContext(batch_shape=(1, T))).routing
        _, combine_BTEC, _ = gate(x_BTD)
    plan = plan_dispatch(routing, T, E, C, drop_policy="position")
    assert plan.dropped > 0
    theirs_TE = combine_BTEC[0].sum(-1)
    ours_TE = weights_TE(plan.token_idx_R, plan.expert_idx_R, plan.weight_R)
    assert torch.equal(ours_TE > 0, theirs_TE > 0)
    torch.testing.assert_close(ours_TE, theirs_TE, **TOL)


def test_balance_loss_counts_all_first_choices_as_the_reference(same_uniforms):
    """Under a binding capacity, moebench's balance loss (E sum_e f_e P_e,
    routers/top1.py ``switch_balance_loss``) equals ``Top2Gating``'s
    E^2 mean_e(density_1 * density_1_proxy), both counting every first
    choice, the dropped ones included."""
    torch.manual_seed(11)
    router = moebench_router("random")
    gate = reference_gate(router, "random", CF_REF)
    x_BTD = torch.randn(1, T, D)
    with same_uniforms(torch.rand(T)):
        aux = router(x_BTD[0], RouterContext(batch_shape=(1, T))).aux_losses
        _, combine_BTEC, balance_ref = gate(x_BTD)
    assert int((combine_BTEC > 0).sum()) < 2 * T  # something was dropped
    torch.testing.assert_close(aux["balance"] / router.cfg.balance_coef, balance_ref, **TOL)


def test_layer_output_equals_the_reference_moe(same_uniforms):
    """The MoE block (router, dispatch, experts, combine) equals
    ``mixture_of_experts.MoE`` holding the same gate and expert weights,
    under random routing and a binding capacity."""
    torch.manual_seed(12)
    router = moebench_router("random")
    experts = Experts(E, D, F_HID, "gelu", impl="torch")
    block = MoEBlock(router, experts, k=2, capacity_factor=CF_OURS, eval_capacity_factor=CF_OURS,
                     dropless=False, drop_policy="position", routing_groups="all").train()
    reference = moe_ref.MoE(D, num_experts=E, hidden_dim=F_HID, activation=nn.GELU,
                            second_policy_train="random", second_threshold_train=0.2,
                            capacity_factor_train=CF_REF, loss_coef=1.0).train()
    with torch.no_grad():
        reference.gate.w_gating.copy_(router.gate.weight.t())
        reference.experts.w1.copy_(experts.w_in_EDH)  # [E, D, F]
        reference.experts.w2.copy_(experts.w_out_EFD)  # [E, F, D]
    x_BTD = torch.randn(1, T, D)
    with same_uniforms(torch.rand(T)):
        y_BTD, stats = block(x_BTD, RouterContext(batch_shape=(1, T)))
        y_ref_BTD, _ = reference(x_BTD)
    assert stats.dropped > 0
    torch.testing.assert_close(y_BTD, y_ref_BTD, **TOL)
