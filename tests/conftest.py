"""Shared fixtures.

Tests run torch on one thread: their tensors are small, so a second thread
buys nothing and oversubscribes a busy machine (subprocesses inherit this).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from moebench.cli import load_config  # noqa: E402
from moebench.config import RunConfig  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def make_config(tmp_path):
    """``make_config(*overrides)``: the CLI's RunConfig, writing records under tmp_path."""

    def make(*overrides: str) -> RunConfig:
        return load_config(f"results_dir={tmp_path / 'runs'}", *overrides)

    return make
