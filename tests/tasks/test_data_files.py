"""Checksums, clear errors and the token cache (moebench/tasks/data.py, corpus.py)."""

import re
from pathlib import Path

import pytest
import torch

from moebench.config import DataConfig
from moebench.errors import DataError
from moebench.tasks.corpus import ByteCorpus
from moebench.tasks.data import SHA256, checked_file

TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20


def test_missing_file_names_path_checksum_and_source(fake_data):
    path = Path(fake_data.config.root) / "wikitext-2/train.txt"
    with pytest.raises(DataError) as err:
        fake_data.task("wikitext2")
    message = str(err.value)
    assert str(path) in message and "not found" in message
    assert SHA256["wikitext-2/train.txt"] in message
    assert "https://github.com/pytorch/examples" in message


def test_changed_file_names_path_and_both_checksums(fake_data):
    path = fake_data.write("tinyshakespeare/input.txt", TEXT)
    expected = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"  # SOURCES.md
    fake_data.monkeypatch.setitem(SHA256, "tinyshakespeare/input.txt", expected)
    with pytest.raises(DataError, match=re.escape(f"{path}: sha256 is ")) as err:
        fake_data.task("shakespeare_char")
    assert expected in str(err.value) and "karpathy/char-rnn" in str(err.value)


def test_no_data_root_says_how_to_set_it():
    with pytest.raises(DataError, match="data.root=PATH or the MOEBENCH_DATA"):
        checked_file(DataConfig(root=None), "ptb/ptb.train.txt")


def test_second_load_reads_the_cache_without_encoding(fake_data, monkeypatch):
    fake_data.write("tinyshakespeare/input.txt", TEXT)
    first = fake_data.task("shakespeare_char")

    def fail(*args):
        raise AssertionError("encoded again despite a cached copy")

    monkeypatch.setattr(ByteCorpus, "encode", fail)
    second = fake_data.task("shakespeare_char")
    assert second.vocab_size == first.vocab_size
    for split in ("train", "val"):
        assert torch.equal(second.tokens[split], first.tokens[split])


def test_changed_source_is_not_served_from_a_stale_cache(fake_data):
    fake_data.write("tinyshakespeare/input.txt", TEXT)
    old = fake_data.task("shakespeare_char")
    fake_data.write("tinyshakespeare/input.txt", TEXT.upper())
    new = fake_data.task("shakespeare_char")
    assert new.vocab_size != old.vocab_size
    assert len(list(Path(fake_data.config.cache_dir).glob("tinyshakespeare-*.npz"))) == 2


def test_cache_holds_only_finished_files(fake_data):
    fake_data.write("tinyshakespeare/input.txt", TEXT)
    fake_data.task("shakespeare_char")
    assert [p.suffix for p in Path(fake_data.config.cache_dir).iterdir()] == [".npz"]
