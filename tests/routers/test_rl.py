"""RL-R on a toy bandit: the REINFORCE estimator's expected gradient is the
analytic gradient of the expected reward (plus the entropy bonus); the
moving-average baseline moves once per training step; the expert output is
scaled by the policy and Switch's balance loss is added."""

import pytest
import torch

from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts
from moebench.routers.base import RouterContext
from moebench.routers.rl import RLConfig, RLRouter
from moebench.routers.top1 import switch_balance_loss

THETA_E = torch.tensor([0.5, -0.3, 1.0, 0.0])  # the policy's logits
REWARD_E = torch.tensor([1.0, 0.0, 2.0, -1.0])  # reward of each arm
T = 200_000
ALL_2 = torch.tensor([True, True])


def bandit_router(**options) -> RLRouter:
    """The policy alone: no balance loss unless asked for."""
    router = RLRouter(RLConfig(name="rl", **{"balance_coef": 0.0, **options}), 4, 4, None).train()
    with torch.no_grad():
        router.gate.weight.zero_()
        router.gate.weight[:, 0] = THETA_E  # token x = e_0, so the logits are THETA_E
    return router


def estimated_gradient(router: RLRouter) -> torch.Tensor:
    """d(all losses)/d(logits) on T pulls of the bandit."""
    x_TD = torch.zeros(T, 4)
    x_TD[:, 0] = 1.0
    out = router(x_TD, RouterContext())
    arm_T = out.routing.expert_idx_A
    reward_T = REWARD_E[arm_T]
    losses = {**out.aux_losses, **out.on_token_loss(-reward_T, torch.ones(T, dtype=torch.bool))}
    router.zero_grad()
    sum(losses.values()).backward()
    return router.gate.weight.grad[:, 0].clone()


@pytest.mark.parametrize("baseline", ["moving_average", "learned"])
@pytest.mark.parametrize("entropy_coef", [0.0, -0.5])
def test_expected_gradient_matches_the_analytic_one(baseline, entropy_coef):
    torch.manual_seed(0)
    router = bandit_router(baseline=baseline, entropy_coef=entropy_coef)
    estimated_gradient(router)  # one batch first, so the moving average has a history
    pi_E = torch.softmax(THETA_E, 0)
    expected_reward = (pi_E * REWARD_E).sum()
    entropy = -(pi_E * pi_E.log()).sum()
    grad_reward_E = pi_E * (REWARD_E - expected_reward)  # d E[r] / d theta
    grad_entropy_E = -pi_E * (pi_E.log() + entropy)  # d H / d theta
    analytic_E = -grad_reward_E + entropy_coef * grad_entropy_E  # d loss / d theta
    torch.testing.assert_close(estimated_gradient(router), analytic_E, atol=0.015, rtol=0)


def test_training_samples_from_the_policy_evaluation_is_greedy():
    torch.manual_seed(0)
    router = bandit_router()
    x_TD = torch.zeros(T, 4)
    x_TD[:, 0] = 1.0
    out = router(x_TD, RouterContext())
    share_E = torch.bincount(out.routing.expert_idx_A, minlength=4) / T
    torch.testing.assert_close(share_E, torch.softmax(THETA_E, 0), atol=0.005, rtol=0)
    router.eval()
    out = router(x_TD[:10], RouterContext())
    assert out.routing.expert_idx_A.tolist() == [2] * 10 and out.on_token_loss is None


def test_moving_average_baseline_is_a_buffer_updated_by_the_hook():
    torch.manual_seed(0)
    router = bandit_router(baseline_decay=0.5)
    assert "reward_mean" in dict(router.named_buffers())
    assert "reward_mean" not in dict(router.named_parameters())  # the optimizer does not own it

    def step(*calls: list[float]) -> None:
        for rewards in calls:  # the hook's calls in one step (micro-batches)
            out = router(torch.eye(4)[[0, 0]], RouterContext())
            out.on_token_loss(-torch.tensor(rewards), ALL_2)
        router.finish_step(lambda t: t)

    step([1.0, 3.0])
    assert float(router.reward_mean) == 2.0  # the average starts at step 0's mean
    step([4.0, 4.0], [6.0, 2.0])  # one step of two micro-batches: a mean reward of 4
    assert float(router.reward_mean) == 3.0  # 0.5 * 2 + 0.5 * 4


def test_moving_average_baseline_moves_once_per_step_under_position_groups():
    """moe.routing_groups=position: the baseline of a step is the same for
    every group, and the step's mean reward moves it once."""
    torch.manual_seed(0)
    B, L, D = 2, 4, 4
    router = RLRouter(RLConfig(name="rl", baseline_decay=0.5), D, 4, None)
    block = MoEBlock(router, Experts(4, D, 8, "gelu"), k=1, capacity_factor=4.0, eval_capacity_factor=4.0,
                     dropless=True, drop_policy="position", routing_groups="position").train()
    counted_T = torch.ones(B * L, dtype=torch.bool)

    def step(reward_BL: torch.Tensor) -> dict[str, torch.Tensor]:
        _, stats = block(torch.randn(B * L, D), RouterContext(batch_shape=(B, L)))
        losses = stats.on_token_loss(-reward_BL.reshape(-1), counted_T)
        router.finish_step(lambda t: t)
        return losses

    step(torch.tensor([[1.0, 2.0, 3.0, 4.0]] * B))  # a mean reward of 2.5 over the step
    # Step 1 meets a baseline of 2.5 in every group: rewards of 2.5 have no advantage.
    losses = step(torch.full((B, L), 2.5))
    assert float(router.reward_mean) == 2.5
    assert losses["policy_gradient"].item() == 0.0


def test_a_group_without_counted_tokens_adds_no_policy_gradient():
    """Masked LM under position groups: a position may have no masked token."""
    for baseline in ("moving_average", "learned"):
        router = bandit_router(baseline=baseline)
        out = router(torch.eye(4)[[0, 0]], RouterContext())
        losses = out.on_token_loss(torch.zeros(2), torch.zeros(2, dtype=torch.bool))
        assert all(value.item() == 0.0 for value in losses.values())


def test_expert_output_is_scaled_by_the_policy_and_balanced_as_switch():
    """Clark et al.'s RL-R is trained as a Switch layer besides REINFORCE: the
    chosen expert's output times pi(e | x), and Switch's balance loss."""
    torch.manual_seed(0)
    x_TD = torch.randn(64, 4)
    router = RLRouter(RLConfig(name="rl", balance_coef=0.01), 4, 4, None).train()
    out = router(x_TD, RouterContext())
    probs_TE = torch.softmax(router.gate_logits(x_TD), -1)
    routing = out.routing
    torch.testing.assert_close(routing.weight_A, probs_TE[routing.token_idx_A, routing.expert_idx_A])
    assert routing.weight_A.requires_grad  # the gate also learns through the combine, as Switch
    torch.testing.assert_close(out.aux_losses["balance"], 0.01 * switch_balance_loss(probs_TE, routing.expert_idx_A))

    plain = RLRouter(RLConfig(name="rl", scale_by_policy=False, balance_coef=0.0), 4, 4, None).train()
    out = plain(x_TD, RouterContext())
    assert torch.all(out.routing.weight_A == 1) and "balance" not in out.aux_losses


def test_tokens_without_a_loss_take_no_policy_gradient():
    """Masked LM: an uncounted token's loss is a placeholder 0, not a reward."""
    torch.manual_seed(0)
    router = bandit_router(baseline_decay=0.5)
    x_TD = torch.eye(4)[[0, 0, 0]]
    out = router(x_TD, RouterContext())
    losses = out.on_token_loss(torch.tensor([-1.0, 0.0, -3.0]), torch.tensor([True, False, True]))
    assert router.step_reward.tolist() == [4.0, 2.0]  # the uncounted token's 0 is not summed in
    router.zero_grad()
    losses["policy_gradient"].backward()
    hook_grad = router.gate.weight.grad.clone()
    # By hand: rewards 1 and 3 against their mean 2 (the first batch's baseline), over 2 tokens.
    log_pi_T = torch.log_softmax(router.gate_logits(x_TD), -1)
    log_pi_T = log_pi_T.gather(1, out.routing.expert_idx_A[:, None]).squeeze(1)
    router.zero_grad()
    (-((torch.tensor([1.0, 3.0]) - 2.0) * log_pi_T[[0, 2]]).mean()).backward()
    torch.testing.assert_close(hook_grad, router.gate.weight.grad)
