"""The real data sets (run when MOEBENCH_DATA is set): the published sizes and
vocabularies of ../shared/data/SOURCES.md."""

from pathlib import Path

import pytest
import torch


def split_sizes(task):
    return {split: len(tokens) for split, tokens in task.tokens.items()}


def test_shakespeare_char_is_nanogpts_encoding(real_task):
    task = real_task("shakespeare_char")
    assert split_sizes(task) == {"train": 1_003_854, "val": 111_540}
    assert task.vocab_size == 65
    text = (Path(task.data.root) / "tinyshakespeare/input.txt").read_text()
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}  # nanoGPT's prepare.py
    ours = torch.cat([task.tokens["train"], task.tokens["val"]]).tolist()
    assert ours == [stoi[c] for c in text]


def test_wikitext2_matches_the_paper(real_task):
    task = real_task("wikitext2")
    assert split_sizes(task) == {"train": 2_088_628, "val": 217_646, "test": 245_569}
    assert task.vocab_size == 33_278
    assert task.eval_splits == ("val", "test")


def test_wikitext2_mlm_adds_mask_to_the_same_vocabulary(real_task):
    task = real_task("wikitext2_mlm")
    assert task.vocab_size == 33_279 and task.mask_id == 33_278
    assert torch.equal(task.tokens["test"], real_task("wikitext2").tokens["test"])


def test_ptb_words(real_task):
    task = real_task("ptb")
    assert split_sizes(task) == {"train": 929_589, "val": 73_760, "test": 82_430}
    assert task.vocab_size == 10_000


def test_ptb_chars(real_task):
    task = real_task("ptb_char")
    # One fewer per split than SOURCES.md's counts, which take the lone space
    # after each file's last newline for one more line.
    assert split_sizes(task) == {"train": 5_017_482, "val": 393_042, "test": 442_423}
    assert task.vocab_size == 50  # 49 symbols and <eos>


@pytest.mark.parametrize("name", ["shakespeare_char", "wikitext2", "ptb", "ptb_char", "wikitext2_mlm"])
def test_batches_come_from_every_eval_split(real_task, name):
    task = real_task(name)
    for split in task.eval_splits:
        batch = task.get_batch(split, 4, torch.Generator().manual_seed(0))
        assert batch.inputs.shape == (4, 64)
        assert int(batch.targets.max()) < task.vocab_size
