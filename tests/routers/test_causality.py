"""Causality: the probe flags routers that let position t see later positions
of its sequence, position groups make them causal-safe, and a causal task
refuses a leaky configuration unless told to measure it."""

import pytest
import torch

from moebench.errors import ConfigError
from moebench.metrics.causality import causal_leak
from moebench.routers.base import RouterContext
from moebench.tasks import TASKS
from moebench.train import train

LEAKY = ["expert_choice", "soft", "base", "sbase"]
TRAIN_ONLY = {"base", "sbase"}  # balanced assignment in training, plain top-k at evaluation
TIGHT = {"capacity_factor": 0.5, "eval_capacity_factor": 0.5}  # drops in both modes


@pytest.fixture
def sequences(random_tokens):
    return random_tokens.get_batch("val", 4, torch.Generator().manual_seed(0)).inputs


def test_probe_passes_causal_routers(lm_model, sequences):
    for router in ["top1", "hash", "rl", "noisy_topk"]:
        assert causal_leak(lm_model(router, {"dropless": True}), sequences) < 1e-5
    # One choice per token, dropped in position order: only earlier tokens decide.
    assert causal_leak(lm_model("top1", TIGHT), sequences) < 1e-5


def test_probe_flags_capacity_that_keeps_first_choices_before_second_ones(lm_model, sequences):
    # GShard's priority: a token keeps its second expert only if later tokens' first
    # choices left room. No router flag says so; the probe measures it.
    assert causal_leak(lm_model("top2", TIGHT), sequences) > 1e-3
    assert causal_leak(lm_model("top2", {**TIGHT, "routing_groups": "position"}), sequences) < 1e-5


@pytest.mark.parametrize("router", LEAKY)
def test_probe_flags_routers_that_compare_tokens(lm_model, sequences, router):
    model = lm_model(router)
    assert causal_leak(model, sequences, training=router in TRAIN_ONLY) > 1e-3
    if router in TRAIN_ONLY:  # the reported (evaluation) numbers are fair
        assert causal_leak(model, sequences) < 1e-5


def test_probing_changes_no_router_state(lm_model, sequences):
    model = lm_model("deepseek_moe")  # its balancing biases move in every training forward
    before = {name: b.clone() for name, b in model.named_buffers()}
    causal_leak(model, sequences, training=True)
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())


def test_probe_flags_capacity_that_drops_by_score(lm_model, sequences):
    moe = {"drop_policy": "score", **TIGHT}
    assert causal_leak(lm_model("top1", moe), sequences) > 1e-3
    assert causal_leak(lm_model("top1", {**moe, "routing_groups": "position"}), sequences) < 1e-5


@pytest.mark.parametrize("router", LEAKY)
def test_position_groups_make_leaky_routers_causal_safe(lm_model, sequences, router):
    model = lm_model(router, {"routing_groups": "position"})
    for training in (False, True):
        assert causal_leak(model, sequences, training=training) < 1e-5


def test_position_groups_route_each_position_on_its_own(lm_model, sequences):
    model = lm_model("expert_choice", {"routing_groups": "position"})
    B, L = sequences.shape
    block = model.blocks[0].ffn
    x_BLD = torch.randn(B, L, 32)
    y_BLD, stats = block(x_BLD, RouterContext(token_ids_T=sequences.reshape(-1), batch_shape=(B, L)))
    for pos in (0, L - 1):  # the same block on one position's tokens alone
        y_BD, _ = block._route(x_BLD[:, pos], RouterContext(token_ids_T=sequences[:, pos]))
        torch.testing.assert_close(y_BLD[:, pos], y_BD)
    C = 2 * B // 4  # cf * B / E tokens per expert in every group
    assert stats.kept_E.tolist() == [C * L] * 4 and stats.routing_groups == L
    assert stats.experts_per_token_T.shape == (B * L,)


def test_leaky_configs_are_refused_on_causal_tasks(make_config):
    for leaky in (["router=expert_choice"], ["router=top1", "moe.drop_policy=score"]):
        with pytest.raises(ConfigError, match="moe.routing_groups"):
            make_config(*leaky, "task=shakespeare_char")
        make_config(*leaky, "task=shakespeare_char", "moe.routing_groups=position")
        make_config(*leaky, "task=shakespeare_char", "router.allow_leaky=true")
        make_config(*leaky, "task=synthetic")  # not causal: nothing to leak
    make_config("router=top1", "task=shakespeare_char")


def test_run_records_the_measured_leak(make_config, random_tokens):
    tiny = ["trainer.max_steps=2", "trainer.batch_tokens=64", "trainer.eval_batches=1",
            "model.d_model=32", "model.n_heads=2", "model.d_ff=32", "model.block_size=16",
            "moe.num_experts=4"]
    leaky = train(make_config("router=expert_choice", "router.allow_leaky=true", *tiny), random_tokens)
    assert leaky.metrics["causal_leak"] > 1e-3
    cfg = make_config("router=top1", "task=synthetic", *tiny)
    synthetic = TASKS.get("synthetic").cls(cfg.task, cfg.data, cfg.seed)
    assert train(cfg, synthetic).metrics["causal_leak"] is None  # no sequences, nothing to probe
