"""Each conf/task/<name>.yaml composes, validates, and takes the model's context length."""

from pathlib import Path

import pytest

from moebench.compose import CONF_DIR
from moebench.validation import validate

TASK_YAMLS = sorted(p.stem for p in Path(CONF_DIR, "task").glob("*.yaml") if p.stem != "synthetic")


@pytest.mark.parametrize("name", TASK_YAMLS)
@pytest.mark.parametrize("model", ["tiny", "small"])
def test_task_config_composes_with_the_models_block_size(make_config, name, model):
    cfg = make_config(f"task={name}", f"model={model}")
    validate(cfg)
    assert cfg.task.name == name
    assert cfg.task.block_size == cfg.model.block_size
