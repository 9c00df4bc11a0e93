"""Causality: the probe flags routers that let position t see later positions
of its sequence, position groups make them causal-safe, and a causal task
refuses a leaky configuration unless told to measure it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moebench.errors import ConfigError
from moebench.metrics.causality import causal_leak, cut_positions
from moebench.models import ModelOutput
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


@pytest.mark.parametrize("router", ["top2", "noisy_topk"])  # k = 2 choices
def test_probe_flags_capacity_that_keeps_first_choices_before_second_ones(lm_model, sequences, router):
    # GShard's priority, which the dispatcher applies to every router with k > 1:
    # a token keeps its second expert only if later tokens' first choices left
    # room. No router flag says so; the probe measures it.
    assert causal_leak(lm_model(router, TIGHT), sequences) > 1e-3
    assert causal_leak(lm_model(router, {**TIGHT, "routing_groups": "position"}), sequences) < 1e-5


class PeeksAhead(nn.Module):
    """A "language model" whose logits at positions ``at`` of sequences ``rows``
    also see the token at position ``sees``."""

    def __init__(self, vocab_size: int, rows: slice, at: slice, sees: int) -> None:
        super().__init__()
        self.vocab_size, self.rows, self.at, self.sees = vocab_size, rows, at, sees

    def forward(self, idx_BL: torch.Tensor, ctx: RouterContext) -> ModelOutput:
        logits_BLV = F.one_hot(idx_BL, self.vocab_size).float()
        logits_BLV[self.rows, self.at] += logits_BLV[self.rows, self.sees, None]
        return ModelOutput(logits_BLV, [])


def test_probe_cuts_each_sequence_at_positions_spread_over_the_context(random_tokens, sequences):
    # Only a cut before position 3 reveals it, not one in the middle of the 16 tokens.
    early = PeeksAhead(random_tokens.data_stats().vocab_size, rows=slice(None), at=slice(0, 1), sees=3)
    assert causal_leak(early, sequences) == 1.0


def test_probe_spreads_over_the_sequences_of_the_batch(random_tokens):
    batch_BL = random_tokens.get_batch("val", 8, torch.Generator().manual_seed(0)).inputs
    late_rows = PeeksAhead(random_tokens.data_stats().vocab_size, rows=slice(4, None), at=slice(0, 15),
                           sees=15)
    assert causal_leak(late_rows, batch_BL) == 1.0


def test_cut_positions_are_seeded_one_per_stratum():
    def cuts(length: int) -> list[int]:
        return cut_positions(length, 4, torch.Generator().manual_seed(0))

    strata = [(0, 31), (31, 63), (63, 95), (95, 127)]  # of positions 0..126 (127 has no future)
    assert all(lo <= t < hi for t, (lo, hi) in zip(cuts(128), strata, strict=True))
    assert cuts(128) == cuts(128)
    assert cuts(3) == [0, 1]  # a short context: every position


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


def test_leaky_configs_are_refused_on_causal_tasks(make_config):
    for leaky in (["router=expert_choice"], ["router=top1", "moe.drop_policy=score"]):
        with pytest.raises(ConfigError, match="moe.routing_groups"):
            make_config(*leaky, "task=shakespeare_char")
        make_config(*leaky, "task=shakespeare_char", "moe.routing_groups=position")
        make_config(*leaky, "task=shakespeare_char", "router.allow_leaky=true")
        make_config(*leaky, "task=synthetic")  # not causal: nothing to leak
    make_config("router=top1", "task=shakespeare_char")
    # A router dropless by its own config drops nothing, by score or otherwise.
    make_config("router=hash", "moe.drop_policy=score", "task=shakespeare_char")
    with pytest.raises(ConfigError, match="moe.routing_groups"):
        make_config("router=hash", "router.dropless=false", "moe.drop_policy=score", "task=shakespeare_char")


def test_run_records_the_measured_leak(make_config, random_tokens):
    tiny = ["trainer.max_steps=2", "trainer.batch_tokens=64", "trainer.eval_batches=1",
            "model.d_model=32", "model.n_heads=2", "model.d_ff=32", "model.block_size=16",
            "moe.num_experts=4"]
    leaky = train(make_config("router=expert_choice", "router.allow_leaky=true", *tiny), random_tokens)
    assert leaky.metrics["causal_leak"] > 1e-3
    cfg = make_config("router=top1", "task=synthetic", *tiny)
    synthetic = TASKS.get("synthetic").cls(cfg.task, cfg.data, cfg.seed)
    assert train(cfg, synthetic).metrics["causal_leak"] is None  # no sequences, nothing to probe


@pytest.mark.parametrize("router,moe,position", [
    ("top1", TIGHT, False),  # each token decides alone; drops by position: the whole batch stays one group
    ("hash", {}, False),  # dropless by its own config
    ("top2", TIGHT, True),  # first choices before second ones
    ("top1", {**TIGHT, "drop_policy": "score"}, True),
    ("expert_choice", {}, True), ("soft", {}, True), ("base", {}, True), ("sbase", {}, True),
])
def test_auto_groups_by_position_exactly_where_routing_would_leak(lm_model, sequences, router, moe, position):
    model = lm_model(router, {**moe, "routing_groups": "auto"})
    assert causal_leak(model, sequences) < 1e-5 and causal_leak(model, sequences, training=True) < 1e-5
    B, L = sequences.shape
    ctx = RouterContext(token_ids_T=sequences.reshape(-1), batch_shape=(B, L))
    assert model(sequences, ctx).layer_stats[-1].routing_groups == (L if position else 1)
    block = model.blocks[-1].ffn
    block = getattr(block, "routed", block)
    _, stats = block(torch.randn(B, L, 32), ctx)  # a context that is not causal: one group
    assert stats.routing_groups == 1


def test_auto_needs_no_allow_leaky_on_causal_tasks(make_config):
    for router in ("expert_choice", "soft", "base", "sbase", "top2"):
        make_config(f"router={router}", "task=shakespeare_char", "moe.routing_groups=auto")
