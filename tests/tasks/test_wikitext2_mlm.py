"""Masked LM: BERT's 15% and 80/10/10 rule, and only chosen positions count."""

import pytest
import torch

from moebench.errors import ConfigError
from moebench.tasks.wikitext2_mlm import bert_mask

V = 1000  # ids 0..V-1; [MASK] is V


@pytest.fixture
def corrupted():
    tokens_BL = torch.randint(V, (400, 500), generator=torch.Generator().manual_seed(0))
    inputs_BL, mask_BL = bert_mask(tokens_BL, V, 0.15, torch.Generator().manual_seed(1))
    return tokens_BL, inputs_BL, mask_BL


def test_about_15_percent_are_chosen_and_split_80_10_10(corrupted):
    tokens_BL, inputs_BL, mask_BL = corrupted
    chosen = mask_BL.bool()
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.005)
    masked = (inputs_BL[chosen] == V).float().mean().item()
    kept = (inputs_BL[chosen] == tokens_BL[chosen]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1 + 0.1 / V, abs=0.01)  # a random id may be the same id
    assert 1 - masked - kept == pytest.approx(0.1 * (1 - 1 / V), abs=0.01)


def test_nothing_outside_the_loss_mask_changes(corrupted):
    tokens_BL, inputs_BL, mask_BL = corrupted
    assert set(mask_BL.unique().tolist()) == {0.0, 1.0}
    outside = ~mask_BL.bool()
    assert torch.equal(inputs_BL[outside], tokens_BL[outside])
    assert not (inputs_BL[outside] == V).any()


@pytest.fixture
def mlm(fake_data):
    fake_data.install("wikitext2_mlm")
    return fake_data.task("wikitext2_mlm", block_size=16), fake_data.task("wikitext2")


def test_batch_predicts_the_original_tokens_at_the_chosen_positions(mlm):
    task, causal = mlm
    assert task.vocab_size == causal.vocab_size + 1 and task.mask_id == causal.vocab_size
    assert not task.causal
    batch = task.get_batch("val", 64, torch.Generator().manual_seed(0))
    assert batch.loss_mask.shape == batch.inputs.shape == batch.targets.shape == (64, 16)
    assert not (batch.targets == task.mask_id).any()
    assert (batch.inputs == task.mask_id).any()
    assert torch.equal(batch.inputs[batch.loss_mask == 0], batch.targets[batch.loss_mask == 0])


def test_data_stats_are_the_input_frequencies_after_masking(mlm):
    task, _ = mlm
    train_N = task.tokens["train"].long().repeat(2000)
    inputs_N, _ = bert_mask(train_N, task.mask_id, task.cfg.mask_prob, torch.Generator().manual_seed(0))
    seen_V = torch.bincount(inputs_N, minlength=task.vocab_size).double()
    expected_V = task.data_stats().token_counts_V
    assert (seen_V / seen_V.sum() - expected_V / expected_V.sum()).abs().sum() < 0.01


def test_mask_prob_must_be_a_share(fake_data):
    with pytest.raises(ConfigError, match="task.mask_prob"):
        fake_data.task("wikitext2_mlm", mask_prob=1.5)
