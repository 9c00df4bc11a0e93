"""The token cache is optional and checked: where it cannot be written a run
goes on; a damaged or altered entry is named, replaced and never used."""

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from moebench.config import DataConfig
from moebench.tasks.data import SHA256
from moebench.tasks.shakespeare_char import ShakespeareChar

CORPUS = ShakespeareChar.corpus
TEXT = b"to be, or not to be, that is the question\n" * 10


@pytest.fixture
def data(tmp_path, monkeypatch) -> DataConfig:
    """A data root holding CORPUS's file, which the checksum table accepts."""
    path = tmp_path / "data" / CORPUS.file
    path.parent.mkdir(parents=True)
    path.write_bytes(TEXT)
    monkeypatch.setitem(SHA256, CORPUS.file, hashlib.sha256(TEXT).hexdigest())
    return DataConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))


def cached_entry(data: DataConfig) -> Path:
    (entry,) = Path(data.cache_dir).glob("*.npz")
    return entry


def assert_true_tokens(data: DataConfig) -> None:
    tokens = CORPUS.load(data)
    expected = CORPUS.encode({CORPUS.file: TEXT})
    assert tokens.vocab_size == expected.vocab_size
    for split, ids in expected.splits.items():
        assert np.array_equal(tokens.splits[split], ids)


def test_an_unwritable_cache_folder_is_a_warning(data, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where the folder would be: unwritable even for root
    data.cache_dir = str(blocker / "cache")
    with caplog.at_level(logging.WARNING):
        assert_true_tokens(data)
    assert "not written" in caplog.text and str(blocker / "cache") in caplog.text


@pytest.mark.parametrize("damage", [
    lambda raw: raw[: len(raw) // 2],  # a partial copy
    lambda raw: b"",  # a full disk
    lambda raw: b"x" * len(raw),
])
def test_a_corrupt_entry_is_named_and_rebuilt(data, caplog, damage):
    CORPUS.load(data)
    entry = cached_entry(data)
    entry.write_bytes(damage(entry.read_bytes()))
    with caplog.at_level(logging.WARNING):
        assert_true_tokens(data)
    assert str(entry) in caplog.text and "unreadable" in caplog.text
    caplog.clear()
    assert_true_tokens(data)  # rebuilt: read back without a warning
    assert caplog.text == ""


def test_an_altered_entry_is_not_used(data, caplog):
    CORPUS.load(data)
    entry = cached_entry(data)
    with np.load(entry) as npz:
        arrays = dict(npz)
    arrays["train"] = np.zeros_like(arrays["train"])  # well formed, key and digest kept
    np.savez(entry, **arrays)
    with caplog.at_level(logging.WARNING):
        assert_true_tokens(data)
    assert str(entry) in caplog.text and "altered" in caplog.text
