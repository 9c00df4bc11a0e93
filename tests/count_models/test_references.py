"""Task references: scored on the task's own tokens and batches, in its
metric, and cached under the data files' sha256."""

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from moebench.config import DataConfig
from moebench.count_models import references
from moebench.count_models.ngram import COUNT_MODELS, Unigram
from moebench.count_models.references import EvalDraw, build_task, task_references
from moebench.errors import ConfigError, DataError
from moebench.evaluate import EVAL_SEED
from moebench.tasks.data import SHA256
from moebench.tasks.ptb_char import PTBChar

PTB_CHAR = {"train": b" a _ c a t _ N \n b a t \n" * 8, "valid": b" t a b \n _ c a b \n" * 4,
            "test": b" c _ a \n" * 8}
WIKI = {"train": b" = Valkyria = \n\n the game <unk> began in N \n" * 8, "valid": b" the game began \n" * 8,
        "test": b" = the <unk> = \n" * 8}


def install(data: DataConfig, monkeypatch, files: dict[str, bytes]) -> None:
    """Write ``files`` under the data root and make the checksum table accept them."""
    for rel, content in files.items():
        path = Path(data.root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        monkeypatch.setitem(SHA256, rel, hashlib.sha256(content).hexdigest())


@pytest.fixture
def data(tmp_path, monkeypatch) -> DataConfig:
    """A data root with small PTB-char and WikiText-2 files."""
    made = DataConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    install(made, monkeypatch, {f"ptb/ptb.char.{split}.txt": text for split, text in PTB_CHAR.items()})
    install(made, monkeypatch, {f"wikitext-2/{split}.txt": text for split, text in WIKI.items()})
    return made


@pytest.fixture
def computed(monkeypatch) -> list[str]:
    """The tasks whose references were computed, not read from the cache."""
    calls = []
    real = references._compute

    def spy(task, task_cls, data, draw):
        calls.append(task_cls.__name__)
        return real(task, task_cls, data, draw)

    monkeypatch.setattr(references, "_compute", spy)
    return calls


def test_whole_split_references_are_the_task_metric_of_its_own_tokens(data):
    refs = task_references("ptb_char", data)
    assert [ref.name for ref in refs] == [model.name for model in COUNT_MODELS]
    tokens = PTBChar.corpus.load(data)  # the task's own encoding: "_", "<eos>" per line
    unigram = Unigram(tokens.splits["train"], tokens.vocab_size)
    for split in ("val", "test"):
        nats = -np.log(unigram.window_probs(tokens.splits[split][None])[0, 1:]).mean()
        assert refs[0].quality[split] == pytest.approx(nats / math.log(2))  # bits per character


def test_the_cache_returns_the_same_numbers_and_is_keyed_by_sha256(data, monkeypatch, computed):
    first = task_references("ptb_char", data)
    assert task_references("ptb_char", data) == first and computed == ["PTBChar"]
    assert len(list(Path(data.cache_dir).glob("count-models-ptb_char-*.npz"))) == 1
    # A changed file has another sha256: recomputed, under a second key.
    install(data, monkeypatch, {"ptb/ptb.char.train.txt": b" t a b \n c _ a _ N \n" * 8})
    changed = task_references("ptb_char", data)
    assert computed == ["PTBChar", "PTBChar"] and changed != first
    assert len(list(Path(data.cache_dir).glob("count-models-ptb_char-*.npz"))) == 2
    assert task_references("ptb_char", data) == changed and len(computed) == 2


def drawn_targets(task, split, draw):
    """The batches an evaluation draws (moebench/evaluate.py)."""
    generator = torch.Generator().manual_seed(EVAL_SEED)
    return [task.get_batch(split, draw.batch_size(task), generator) for _ in range(draw.eval_batches)]


def test_draw_references_score_the_evaluations_batches(data):
    draw = EvalDraw(batch_tokens=16, eval_batches=3)  # 4 windows of 4 tokens, 3 times
    settings = {"name": "ptb_char", "block_size": 4}
    task = build_task("ptb_char", settings, data)
    unigram = Unigram(task.tokens["train"].numpy(), task.vocab_size)
    targets = torch.cat([b.targets for b in drawn_targets(task, "val", draw)]).numpy()
    assert targets.shape == (12, 4)
    expected = -np.log(unigram.window_probs(targets)).mean() / math.log(2)
    (ref, *_) = task_references("ptb_char", data, settings, draw)
    assert ref.quality["val"] == pytest.approx(expected)
    assert ref.quality["val"] != pytest.approx(task_references("ptb_char", data)[0].quality["val"])


def test_the_masked_lm_is_scored_at_its_masked_positions_in_nats(data):
    draw = EvalDraw(batch_tokens=64, eval_batches=4)
    settings = {"name": "wikitext2_mlm", "block_size": 8, "mask_prob": 0.3, "head": "adaptive"}
    task = build_task("wikitext2_mlm", settings, data)
    trigram = COUNT_MODELS[2](task.tokens["train"].numpy(), task.mask_id)
    nats = []
    for batch in drawn_targets(task, "val", draw):
        # from the uncorrupted window, left of each masked position only
        probs = trigram.window_probs(batch.targets.numpy())[batch.loss_mask.bool().numpy()]
        nats.append(-np.log(probs))
    refs = task_references("wikitext2_mlm", data, settings, draw)
    assert refs[2].quality["val"] == pytest.approx(np.concatenate(nats).mean())  # masked_loss is nats
    whole = task_references("wikitext2", data)  # every position: the causal task's cross-entropy
    assert task_references("wikitext2_mlm", data)[2].quality["test"] == pytest.approx(
        math.log(whole[2].quality["test"]))


def test_the_synthetic_task_gets_the_majority_class(tmp_path):
    draw = EvalDraw(batch_tokens=256, eval_batches=2)  # 512 examples, as an evaluation draws them
    data = DataConfig(root=None, cache_dir=str(tmp_path))
    (ref,) = task_references("synthetic", data, {"name": "synthetic"}, draw)
    task = build_task("synthetic", {"name": "synthetic"}, data)
    labels = torch.cat([b.targets for b in drawn_targets(task, "val", draw)])
    generator = torch.Generator().manual_seed(7)
    majority = torch.cat([task.get_batch("train", 4096, generator).targets for _ in range(4)]).bincount().argmax()
    assert ref.name == "majority class"
    assert ref.quality["val"] == pytest.approx((labels == majority).double().mean().item())


def test_missing_files_and_bad_settings_are_clear_errors(tmp_path):
    data = DataConfig(root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="enwik8/enwik8: file not found"):
        task_references("enwik8", data)
    with pytest.raises(ConfigError, match="config.task="):
        build_task("synthetic", {"num_classes": "many"}, data)


@pytest.mark.skipif(not os.environ.get("MOEBENCH_DATA"), reason="MOEBENCH_DATA is not set")
def test_real_references_match_the_published_numbers(tmp_path):
    data = DataConfig(root=os.environ["MOEBENCH_DATA"], cache_dir=str(tmp_path))
    unigram, bigram, _ = task_references("shakespeare_char", data)
    assert (round(unigram.quality["val"], 2), round(bigram.quality["val"], 2)) == (4.83, 3.58)  # the issue's
    unigram, _, trigram = task_references("ptb", data)
    assert round(unigram.quality["val"]) == 685  # the issue's
    # Mikolov 2012 (thesis, Table 4.1): a Kneser-Ney trigram, PTB test perplexity 148.3.
    assert trigram.quality["test"] == pytest.approx(148.3, rel=0.005)
