"""Fine-tuning transfer: the body moves between tasks, the vocabulary-sized parts do not."""

import json

import pytest
import torch

import moebench.run
from moebench.models.ffn import FFNFactory
from moebench.models.transformer import Transformer
from moebench.routers.base import DataStats
from moebench.run import pretrain, run
from moebench.tasks.synthetic import SyntheticConfig
from moebench.tracking.base import NoTracker
from moebench.train import load_matching


def test_load_matching_copies_the_body_and_skips_the_vocabulary(make_config):
    cfg = make_config("model.d_model=32", "model.d_ff=64")
    ffn = FFNFactory(cfg.router, cfg.model, cfg.moe, DataStats())
    torch.manual_seed(0)
    source = Transformer(cfg.model, vocab_size=50, causal=True, ffn=ffn)
    target = Transformer(cfg.model, vocab_size=70, causal=True, ffn=ffn)
    copied = load_matching(target, source.state_dict())
    assert "tok_emb.weight" not in copied and "head.weight" not in copied
    assert "blocks.0.ffn.router.gate.weight" in copied
    assert "blocks.1.ffn.experts.w_in_EDH" in copied
    for name in copied:
        assert torch.equal(target.state_dict()[name], source.state_dict()[name])
    assert target.tok_emb.weight.shape == (70, 32)


def test_transfer_run_pretrains_then_fine_tunes(make_config):
    cfg = make_config("trainer.max_steps=20", "trainer.eval_every=10", "trainer.eval_batches=2",
                      "task.oracle_baseline=false", "transfer.pretrain_steps=30")
    cfg.transfer.pretrain_task = SyntheticConfig(name="synthetic", world_seed=1, oracle_baseline=False)
    record = json.loads(run(cfg).read_text())
    m = record["metrics"]
    assert record["status"] == "completed" and m["steps"] == 20
    assert 0 < m["pretrain_quality"] <= 1 and 0 < m["quality"] <= 1
    assert record["config"]["transfer"]["pretrain_task"]["world_seed"] == 1


def test_hash_routing_keeps_the_fine_tuning_tasks_map(make_config):
    """A hash map is the size of its task's vocabulary: it never transfers, so
    the fine-tuned model routes by the map drawn for its own vocabulary."""
    cfg = make_config("router=hash", "model.d_model=32", "model.d_ff=64")
    source, target = (Transformer(cfg.model, vocab_size=V, causal=True,
                                  ffn=FFNFactory(cfg.router, cfg.model, cfg.moe, DataStats(vocab_size=V)))
                      for V in (50, 70))
    own_map = target.state_dict()["blocks.0.ffn.router.expert_V"].clone()
    copied = load_matching(target, source.state_dict())
    assert "blocks.0.ffn.router.expert_V" not in copied and "blocks.0.ffn.experts.w_in_EDH" in copied
    assert torch.equal(target.state_dict()["blocks.0.ffn.router.expert_V"], own_map)


@pytest.mark.parametrize("pretrain_flops, expected", [(1e9, 1e9), (None, None)])
def test_pretraining_has_its_own_budget(make_config, monkeypatch, pretrain_flops, expected):
    """transfer.pretrain_train_flops, when set, is the pretraining's budget
    (over transfer.pretrain_steps); the fine-tuning's budget never is."""
    cfg = make_config("trainer.max_train_flops=5e9", "transfer.pretrain_steps=7",
                      f"transfer.pretrain_train_flops={'null' if pretrain_flops is None else pretrain_flops}")
    cfg.transfer.pretrain_task = SyntheticConfig(name="synthetic", oracle_baseline=False)
    seen = []
    monkeypatch.setattr(moebench.run, "train", lambda pre_cfg, task, **kwargs: seen.append(pre_cfg.trainer))
    pretrain(cfg, NoTracker())
    assert (seen[0].max_train_flops, seen[0].max_tokens, seen[0].max_steps) == (expected, None, 7)
