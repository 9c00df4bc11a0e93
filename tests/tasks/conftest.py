"""Fixtures for the task tests: small generated data sets, and the real ones
when MOEBENCH_DATA points at them (CI sets it to ../shared/data)."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from moebench.config import DataConfig
from moebench.tasks import TASKS, Task
from moebench.tasks.data import SHA256

# Small generated files standing in for each LM task's data set.
WIKI = {"train": b" = Valkyria = \n\n the game <unk> began in N \n", "valid": b" the game began \n",
        "test": b" = the <unk> = \n"}
PTB_CHAR = {"train": b" a _ c a t _ N \n b a t \n", "valid": b" t a b \n", "test": b" c _ a \n"}
SHAKESPEARE = b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 4
GENERATED = {
    "shakespeare_char": {"tinyshakespeare/input.txt": SHAKESPEARE},
    "wikitext2": {f"wikitext-2/{split}.txt": text * 8 for split, text in WIKI.items()},
    "ptb": {f"ptb/ptb.{split}.txt": text.lower() * 8 for split, text in WIKI.items()},
    "ptb_char": {f"ptb/ptb.char.{split}.txt": text * 8 for split, text in PTB_CHAR.items()},
    "enwik8": {"enwik8/enwik8": np.random.default_rng(0).integers(32, 127, 4000, np.uint8).tobytes()},
}
GENERATED["wikitext2_mlm"] = GENERATED["wikitext2"]


class FakeData:
    """A data root in a temporary folder whose files the checksum table accepts."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.monkeypatch = root, monkeypatch
        self.config = DataConfig(root=str(root / "data"), cache_dir=str(root / "cache"))

    def write(self, rel_path: str, content: bytes) -> Path:
        path = Path(self.config.root) / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        self.monkeypatch.setitem(SHA256, rel_path, hashlib.sha256(content).hexdigest())
        return path

    def install(self, task_name: str) -> None:
        for rel_path, content in GENERATED[task_name].items():
            self.write(rel_path, content)

    def task(self, name: str, **options: object) -> Task:
        return make_task(name, self.config, **options)


def make_task(name: str, data: DataConfig, block_size: int = 8, **options: object) -> Task:
    entry = TASKS.get(name)
    return entry.cls(entry.config_cls(name=name, block_size=block_size, **options), data, seed=0)


@pytest.fixture
def fake_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeData:
    return FakeData(tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def real_task(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Task]:
    """Builds each real-data task once per session, with a fresh cache."""
    root = os.environ.get("MOEBENCH_DATA")
    if not root:
        pytest.skip("MOEBENCH_DATA is not set")
    data = DataConfig(root=root, cache_dir=str(tmp_path_factory.mktemp("cache")))
    return functools.cache(lambda name: make_task(name, data, block_size=64))
