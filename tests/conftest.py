"""Shared fixtures."""

from __future__ import annotations

import pytest

from moebench.cli import load_config
from moebench.config import RunConfig


@pytest.fixture
def make_config(tmp_path):
    """``make_config(*overrides)``: the CLI's RunConfig, writing records under tmp_path."""

    def make(*overrides: str) -> RunConfig:
        return load_config(f"results_dir={tmp_path / 'runs'}", *overrides)

    return make
