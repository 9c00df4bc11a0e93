"""moe.routing_groups=position routes all positions in one batched call; the
result is what routing each position's tokens alone gives (the definition of
a position group), for every router: outputs, capacity and drops, per-token
statistics in token order, and balance losses averaged over the groups."""

import copy

import pytest
import torch

from moebench.routers.base import RouterContext

B, L, D = 6, 16, 32  # lm_model's d_model
TIGHT = {"capacity_factor": 0.5, "eval_capacity_factor": 0.5}  # drops in both modes

# (router, moe options, router options, training): deterministic settings, since
# a batched call draws its random numbers in another order than a loop would.
CASES = [
    ("top1", TIGHT, {}, True),
    ("top2", TIGHT, {"second_policy": "all", "second_policy_eval": "all"}, True),
    ("noisy_topk", TIGHT, {}, False),
    ("expert_choice", {}, {}, True),
    ("base", {}, {}, True),
    ("base", TIGHT, {}, False),
    ("sbase", TIGHT, {}, True),
    ("soft", {}, {}, True),
    ("hash", TIGHT, {"dropless": False}, True),
    ("rl", TIGHT, {"eval_dropless": False}, False),
    ("kmeans", TIGHT, {"eval_dropless": False}, False),
    ("deepseek_moe", TIGHT, {"dropless": False}, True),
    ("dense_softmax", {}, {}, True),
]


def routed_block(model):
    ffn = model.blocks[0].ffn
    return getattr(ffn, "routed", ffn)  # DeepSeekMoE: its routed experts' block


@pytest.mark.parametrize("router,moe,options,training", CASES)
def test_one_batched_call_equals_each_position_routed_alone(lm_model, router, moe, options, training):
    block = routed_block(lm_model(router, {**moe, "routing_groups": "position"}, **options)).train(training)
    alone = copy.deepcopy(block)  # the same parameters and router state (BASE's rotation)
    torch.manual_seed(1)
    x_BLD = torch.randn(B, L, D)
    ids_BL = torch.randint(32, (B, L))

    y_BLD, stats = block(x_BLD, RouterContext(token_ids_T=ids_BL.reshape(-1), batch_shape=(B, L)))

    parts = [alone._route(x_BLD[:, pos], RouterContext(token_ids_T=ids_BL[:, pos])) for pos in range(L)]
    torch.testing.assert_close(y_BLD, torch.stack([y for y, _ in parts], dim=1))
    groups = [s for _, s in parts]
    assert stats.routing_groups == L
    torch.testing.assert_close(stats.kept_E, sum(s.kept_E for s in groups))  # soft mass: float
    torch.testing.assert_close(stats.routed_E, sum(s.routed_E for s in groups))
    assert stats.dropped == sum(s.dropped for s in groups)
    assert stats.expert_rows == sum(s.expert_rows for s in groups)
    for field in ("experts_per_token_T", "top_expert_T", "dropped_T", "logits_TE"):
        if getattr(stats, field) is not None:
            expected = torch.stack([getattr(s, field) for s in groups], dim=1).flatten(0, 1)
            torch.testing.assert_close(getattr(stats, field), expected)
    for name, loss in stats.aux_losses.items():
        torch.testing.assert_close(loss, torch.stack([s.aux_losses[name] for s in groups]).mean())
    if moe is TIGHT and router not in ("base", "soft", "expert_choice", "dense_softmax"):
        assert stats.dropped > 0  # the capacity bit, per group


def test_on_token_loss_pairs_each_loss_with_its_own_tokens_choice(lm_model):
    """RL's hook gets the per-token losses in token order; after the
    reordering by position each must meet its own token's log pi(e | x)."""
    block = routed_block(lm_model("rl", {"routing_groups": "position", "dropless": True},
                                  baseline="learned")).train()  # zero-initialized: b = 0
    x_BLD = torch.randn(B, L, D)
    _, stats = block(x_BLD, RouterContext(step=0, batch_shape=(B, L)))
    counted_BL = torch.zeros(B, L, dtype=torch.bool)
    counted_BL[1, 3] = True
    token_losses_BL = torch.arange(B * L, dtype=torch.float).view(B, L)  # each token its own loss
    losses = stats.on_token_loss(token_losses_BL.reshape(-1), counted_BL.reshape(-1))
    chosen = int(stats.top_expert_T.view(B, L)[1, 3])
    log_pi = torch.log_softmax(block.router.gate_logits(x_BLD[1, 3]), -1)[chosen]
    reward = -token_losses_BL[1, 3]
    torch.testing.assert_close(losses["policy_gradient"], -reward * log_pi)  # -(r - 0) log pi
