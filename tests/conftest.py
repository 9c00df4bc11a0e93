"""Shared fixtures.

Tests run torch on one thread: their tensors are small, so a second thread
buys nothing and oversubscribes a busy machine (subprocesses inherit this).
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from moebench.commands import app  # noqa: E402
from moebench.compose import load_config  # noqa: E402
from moebench.config import RunConfig  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def make_config(tmp_path):
    """``make_config(*overrides)``: the CLI's RunConfig, writing records under tmp_path."""

    def make(*overrides: str) -> RunConfig:
        return load_config(f"results_dir={tmp_path / 'runs'}", *overrides)

    return make


@pytest.fixture
def exit_code_of(monkeypatch, tmp_path):
    """``exit_code_of(*overrides)``: run the command line in this process, return
    its exit code; Hydra's logging setup is undone afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def main(*overrides: str) -> int:
        monkeypatch.setattr(sys, "argv", ["moebench", *overrides, f"hydra.run.dir={tmp_path}/out",
                                          f"hydra.sweep.dir={tmp_path}/multirun"])
        with pytest.raises(SystemExit) as stop:
            app.main()
        return stop.value.code

    yield main
    root.handlers[:] = handlers
    root.setLevel(level)
