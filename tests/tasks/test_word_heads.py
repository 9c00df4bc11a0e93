"""Word-level tasks with an adaptive softmax head: selected by config (the
default of the word tasks), exact losses at the targets, the masked LM's head
at its masked positions only, and one-line errors for bad cutoffs."""

import math

import pytest
import torch

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.metrics.causality import causal_leak
from moebench.models.ffn import FFNFactory
from moebench.models.adaptive import AdaptiveHead
from moebench.routers import ROUTERS
from moebench.routers.base import RouterContext
from moebench.train import train

ADAPTIVE = {"head": "adaptive", "adaptive_cutoffs": [2, 5]}  # the generated files hold 9-10 words
MODEL = ModelConfig(name="t", d_model=16, n_layers=1, n_heads=2, d_ff=32, block_size=8)


def build(task):
    ffn = FFNFactory(ROUTERS.get("top1").config_cls(name="top1"), MODEL, MoEConfig(num_experts=4),
                     task.data_stats())
    torch.manual_seed(0)
    return task.build_model(MODEL, ffn)


@pytest.mark.parametrize("name", ["wikitext2", "ptb", "wikitext2_mlm"])
def test_word_tasks_default_to_the_adaptive_head_and_char_tasks_to_full(make_config, name):
    cfg = make_config(f"task={name}")
    assert cfg.task.head == "adaptive" and cfg.task.adaptive_cutoffs[0] > 0
    for char_task in ("shakespeare_char", "ptb_char"):  # always a full softmax: no option
        assert not hasattr(make_config(f"task={char_task}").task, "head")
    assert make_config(f"task={name}", "task.head=full").task.head == "full"


@pytest.mark.parametrize("name", ["wikitext2", "wikitext2_mlm"])
def test_task_losses_are_the_exact_negative_log_likelihood(fake_data, name):
    fake_data.install(name)
    task = fake_data.task(name, **ADAPTIVE)
    model = build(task).eval()
    assert isinstance(model.head, AdaptiveHead)
    batch = task.get_batch("val", 4, torch.Generator().manual_seed(0))
    out = model(batch.inputs, RouterContext())
    assert out.logits is None
    log_prob_TV = out.head.log_prob(out.hidden.flatten(0, 1))
    torch.testing.assert_close(log_prob_TV.exp().sum(-1), torch.ones(len(log_prob_TV)))
    counted_T = batch.counted_T()
    expected_T = -log_prob_TV.gather(1, batch.targets.reshape(-1, 1)).squeeze(1) * counted_T
    torch.testing.assert_close(task.token_losses(out, batch), expected_T)
    predicted_T = task.predictions(out, batch)
    assert torch.equal(predicted_T[counted_T], log_prob_TV.argmax(-1)[counted_T])


def test_the_ids_are_ranked_by_their_training_counts(fake_data):
    fake_data.install("wikitext2")
    task = fake_data.task("wikitext2", **ADAPTIVE)
    counts_V = torch.bincount(task.tokens["train"].long(), minlength=task.vocab_size)
    ranked_counts_V = counts_V[build(task).head.id_of_rank_V]
    assert torch.equal(ranked_counts_V, counts_V.sort(descending=True).values)


def test_masked_lm_computes_the_head_at_the_masked_positions_only(fake_data, monkeypatch):
    fake_data.install("wikitext2_mlm")
    task = fake_data.task("wikitext2_mlm", **ADAPTIVE)
    model = build(task)
    rows_seen = []
    forward = model.head.softmax.forward
    monkeypatch.setattr(model.head.softmax, "forward",
                        lambda input_, target_: rows_seen.append(len(input_)) or forward(input_, target_))
    batch = task.get_batch("train", 16, torch.Generator().manual_seed(0))
    out = model(batch.inputs, RouterContext())
    losses_T = task.token_losses(out, batch)
    masked = int(batch.loss_mask.sum())
    assert 0 < masked < batch.targets.numel() and rows_seen == [masked]
    assert (losses_T[~batch.counted_T()] == 0).all() and (losses_T[batch.counted_T()] > 0).all()
    # The head's FLOPs, per token of the forward: its work on the masked rows only.
    assert model.head.flops_per_token() == pytest.approx(
        model.head.loss_flops(model.head.rank_of_id_V[batch.targets.flatten()[batch.counted_T()]])
        / batch.targets.numel())


@pytest.mark.parametrize(("options", "key"), [
    ({"head": "hierarchical"}, "task.head"),
    ({"head": "adaptive"}, "task.adaptive_cutoffs"),  # none given
    ({"head": "adaptive", "adaptive_cutoffs": [5, 2]}, "task.adaptive_cutoffs"),
    ({"head": "adaptive", "adaptive_cutoffs": [0, 5]}, "task.adaptive_cutoffs"),
    ({"head": "adaptive", "adaptive_cutoffs": [2, 9]}, "task.adaptive_cutoffs"),  # 9 words
    ({**ADAPTIVE, "adaptive_div_value": 0.5}, "task.adaptive_div_value"),
])
def test_bad_head_options_fail_with_one_line(fake_data, options, key):
    fake_data.install("wikitext2")
    with pytest.raises(ConfigError, match=rf"^{key}=.* is not valid; allowed: [^\n]*$"):
        fake_data.task("wikitext2", **options)


def test_a_run_reports_exact_perplexity_head_flops_and_the_causality_probe(make_config, fake_data):
    fake_data.install("wikitext2")
    task = fake_data.task("wikitext2", block_size=8, **ADAPTIVE)
    cfg = make_config("task=wikitext2", "trainer.max_steps=3", "trainer.batch_tokens=64",
                      "trainer.eval_batches=1", "model.d_model=16", "model.n_heads=2",
                      "model.d_ff=16", "model.block_size=8", "trainer.max_train_flops=1e6")
    metrics = train(cfg, task).metrics
    assert metrics["quality"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert 0 < metrics["flops_breakdown"]["head"] < 2 * 16 * task.vocab_size
    assert 0 < metrics["train_flops_breakdown"]["head"]
    assert metrics["causal_leak"] < 1e-5 and 0 <= metrics["val_accuracy"] <= 1


def test_more_clusters_than_the_width_allows_fail_with_one_line(fake_data):
    fake_data.install("wikitext2")
    task = fake_data.task("wikitext2", head="adaptive", adaptive_cutoffs=[1, 2, 3, 4])
    with pytest.raises(ConfigError, match=r"^task.adaptive_cutoffs=\[1, 2, 3, 4\] is not valid; "
                                          r"allowed: fewer cutoffs: .*model.d_model=16"):
        build(task)  # the fourth tail cluster would be 16 / 4^4 < 1 wide


def test_the_causality_probe_sees_a_leak_through_the_hidden_states(fake_data):
    fake_data.install("wikitext2")
    task = fake_data.task("wikitext2", **ADAPTIVE)
    ffn = FFNFactory(ROUTERS.get("expert_choice").config_cls(name="expert_choice"), MODEL,
                     MoEConfig(num_experts=4), task.data_stats())
    torch.manual_seed(0)
    model = task.build_model(MODEL, ffn)  # expert choice compares the tokens of a sequence
    inputs_BL = task.get_batch("val", 4, torch.Generator().manual_seed(0)).inputs
    assert causal_leak(model, inputs_BL) > 1e-3
