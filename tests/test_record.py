"""Run records: strict JSON, the user's umask, and a resume key that only
result-changing config keys move."""

import copy
import json
import os

import pytest

from moebench.record import RESULT_NEUTRAL_KEYS, config_hash, find_completed, write_record

CONFIG = {
    "seed": 0, "results_dir": "results/runs",
    "data": {"root": "/data", "cache_dir": None},
    "router": {"name": "top1", "k": 1, "allow_leaky": False},
    "trainer": {"lr": 3e-3, "num_threads": None, "log_every_s": 2.0},
}


def changed(key: str, value: object) -> dict:
    config = copy.deepcopy(CONFIG)
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    return config


@pytest.mark.parametrize("key, value", [
    ("results_dir", "/elsewhere"), ("data.root", "/mnt/shared/data"), ("data.cache_dir", "/tmp/c"),
    ("trainer.num_threads", 16), ("trainer.log_every_s", 10.0), ("router.allow_leaky", True),
])
def test_the_resume_key_ignores_what_does_not_change_the_result(key, value):
    # Another machine's data folder or thread count must not redo every committed run.
    assert key in RESULT_NEUTRAL_KEYS
    assert config_hash(changed(key, value)) == config_hash(CONFIG)


@pytest.mark.parametrize("key, value", [("seed", 1), ("trainer.lr", 1e-3), ("router.k", 2)])
def test_the_resume_key_follows_what_changes_the_result(key, value):
    original = copy.deepcopy(CONFIG)
    assert config_hash(changed(key, value)) != config_hash(CONFIG)
    assert CONFIG == original  # hashing leaves the config as it was


def test_non_finite_numbers_are_written_as_null(tmp_path):
    digest = config_hash(CONFIG)
    record = {"run_id": f"ptb-top1-s0-{digest}-20260101T000000-abcdef", "status": "completed",
              "metrics": {"val_loss": float("nan"), "quality": float("inf"), "steps": 3},
              "curves": [{"train_loss": float("-inf")}]}
    path = write_record(record, tmp_path)

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    strict = json.loads(path.read_text(), parse_constant=refuse)
    assert strict["metrics"] == {"val_loss": None, "quality": None, "steps": 3}
    assert strict["curves"] == [{"train_loss": None}]
    assert find_completed(tmp_path, digest) == path


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_records_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_record({"run_id": "r"}, tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
