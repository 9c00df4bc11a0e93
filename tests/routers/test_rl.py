"""RL-R on a toy bandit: the REINFORCE estimator's expected gradient is the
analytic gradient of the expected reward (plus the entropy bonus)."""

import pytest
import torch

from moebench.routers.base import RouterContext
from moebench.routers.rl import RLConfig, RLRouter

THETA_E = torch.tensor([0.5, -0.3, 1.0, 0.0])  # the policy's logits
REWARD_E = torch.tensor([1.0, 0.0, 2.0, -1.0])  # reward of each arm
T = 200_000
ALL_2 = torch.tensor([True, True])


def bandit_router(**options) -> RLRouter:
    router = RLRouter(RLConfig(name="rl", **options), 4, 4, None).train()
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
    assert torch.all(out.routing.weight_A == 1)  # the choice is learned from the reward alone
    router.eval()
    out = router(x_TD[:10], RouterContext())
    assert out.routing.expert_idx_A.tolist() == [2] * 10 and out.on_token_loss is None


def test_moving_average_baseline_is_a_buffer_updated_by_the_hook():
    torch.manual_seed(0)
    router = bandit_router(baseline_decay=0.5)
    assert "reward_mean" in dict(router.named_buffers())
    assert "reward_mean" not in dict(router.named_parameters())  # the optimizer does not own it
    out = router(torch.eye(4)[[0, 0]], RouterContext())
    out.on_token_loss(torch.tensor([-1.0, -3.0]), ALL_2)  # rewards 1 and 3: starts at their mean
    assert float(router.reward_mean) == 2.0
    out.on_token_loss(torch.tensor([-4.0, -4.0]), ALL_2)
    assert float(router.reward_mean) == 3.0  # 0.5 * 2 + 0.5 * 4


def test_tokens_without_a_loss_take_no_policy_gradient():
    """Masked LM: an uncounted token's loss is a placeholder 0, not a reward."""
    torch.manual_seed(0)
    router = bandit_router(baseline_decay=0.5)
    x_TD = torch.eye(4)[[0, 0, 0]]
    out = router(x_TD, RouterContext())
    losses = out.on_token_loss(torch.tensor([-1.0, 0.0, -3.0]), torch.tensor([True, False, True]))
    assert float(router.reward_mean) == 2.0  # the uncounted token's 0 is not averaged in
    router.zero_grad()
    losses["policy_gradient"].backward()
    hook_grad = router.gate.weight.grad.clone()
    # By hand: rewards 1 and 3 against their mean 2 (the first batch's baseline), over 2 tokens.
    log_pi_T = torch.log_softmax(router.gate_logits(x_TD), -1)
    log_pi_T = log_pi_T.gather(1, out.routing.expert_idx_A[:, None]).squeeze(1)
    router.zero_grad()
    (-((torch.tensor([1.0, 3.0]) - 2.0) * log_pi_T[[0, 2]]).mean()).backward()
    torch.testing.assert_close(hook_grad, router.gate.weight.grad)
