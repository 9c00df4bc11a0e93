"""Every registered text task on small generated files: batches, model, metric."""

import math

import pytest
import torch

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.models.ffn import FFNFactory
from moebench.routers import ROUTERS
from moebench.routers.base import RouterContext
from moebench.tasks import TASKS
from moebench.tasks.lm import LMTask, random_windows

L = 8


def ffn_factory(task, model_cfg):
    return FFNFactory(ROUTERS.get("top1").config_cls(name="top1"), model_cfg, MoEConfig(),
                      task.data_stats())


LM_TASKS = [name for name in TASKS.names() if issubclass(TASKS.get(name).cls, LMTask)]


@pytest.fixture(params=LM_TASKS)
def task(request, fake_data):
    fake_data.install(request.param)
    return fake_data.task(request.param, block_size=L)


def test_batches_are_windows_of_the_split(task):
    batch = task.get_batch("train", 16, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == batch.targets.shape == (16, L)
    assert batch.inputs.dtype == batch.targets.dtype == torch.int64
    assert batch.token_ids is batch.inputs  # hash routing reads the inputs
    # A causal example is block_size + 1 tokens; a masked one is its targets.
    window_BW = torch.cat([batch.inputs, batch.targets[:, -1:]], 1) if task.causal else batch.targets
    all_windows_NW = task.tokens["train"].long().unfold(0, window_BW.shape[1], 1)
    for row_W in window_BW:
        assert (all_windows_NW == row_W).all(1).any()
    if task.causal:
        assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])  # shifted by one
        assert batch.loss_mask is None


def test_batches_repeat_per_generator_seed(task):
    a, b = (task.get_batch("val", 4, torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_eval_splits_exist_and_start_with_val(task):
    assert task.eval_splits[0] == "val"
    assert set(task.eval_splits) == set(task.tokens) - {"train"}
    with pytest.raises(ConfigError, match="train, val"):
        task.get_batch("dev", 1, torch.Generator())


def test_model_predicts_the_vocabulary_with_the_task_causality(task):
    model_cfg = ModelConfig(name="t", d_model=16, n_layers=1, n_heads=2, d_ff=32, block_size=L,
                            moe_every=2)  # one dense layer: no capacity effects between tokens
    model = task.build_model(model_cfg, ffn_factory(task, model_cfg))
    batch = task.get_batch("train", 2, torch.Generator().manual_seed(0))
    logits = model(batch.inputs, RouterContext()).logits
    assert logits.shape == (2, L, task.vocab_size)
    changed = batch.inputs.clone()
    changed[:, -1] = (changed[:, -1] + 1) % task.vocab_size
    first_position_moved = not torch.allclose(model(changed, RouterContext()).logits[:, 0], logits[:, 0])
    assert first_position_moved == (not task.causal)


def test_block_size_beyond_the_model_is_refused(task):
    model_cfg = ModelConfig(name="t", d_model=16, n_heads=2, block_size=L - 1)
    with pytest.raises(ConfigError, match="task.block_size"):
        task.build_model(model_cfg, ffn_factory(task, model_cfg))


@pytest.mark.parametrize("name", LM_TASKS)
def test_block_size_beyond_the_shortest_split_is_refused_at_load(fake_data, name):
    # Was found only after training, when evaluation drew from a shorter split.
    fake_data.install(name)
    shortest = min(len(t) for t in fake_data.task(name).tokens.values())
    longest = shortest if name == "wikitext2_mlm" else shortest - 1  # causal: + 1 target
    task = fake_data.task(name, block_size=longest)
    for split in task.tokens:
        assert task.get_batch(split, 2, torch.Generator()).inputs.shape == (2, longest)
    with pytest.raises(ConfigError, match=rf"task.block_size={longest + 1} .*1\.\.{longest}: the \w+ split"):
        fake_data.task(name, block_size=longest + 1)


def test_data_stats_count_the_vocabulary(task):
    stats = task.data_stats()
    assert stats.vocab_size == task.vocab_size == len(stats.token_counts_V)
    assert stats.token_counts_V.sum() == pytest.approx(len(task.tokens["train"]))


def test_quality_is_the_metric_of_the_mean_loss(task):
    loss = 1.5
    expected = {"bpc": loss / math.log(2), "perplexity": math.exp(loss), "masked_loss": loss}
    assert task.quality(loss, 0.3) == pytest.approx(expected[task.quality_metric])
    assert not task.higher_is_better


def test_enwik8_splits_a_generated_file_90_5_5(fake_data):
    fake_data.install("enwik8")  # 4,000 bytes
    task = fake_data.task("enwik8")
    assert {split: len(t) for split, t in task.tokens.items()} == {"train": 3600, "val": 200, "test": 200}


def test_windows_never_cross_the_end_of_the_stream():
    tokens_N = torch.arange(10)
    window_BW = random_windows(tokens_N, 32, 10, torch.Generator().manual_seed(0))
    assert (window_BW == tokens_N).all()
