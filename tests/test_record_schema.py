"""The record's typed model: the committed JSON Schema is the generated one, a
run's record passes it and a wrong one does not, and records of every
readable version load, the older migrated."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from moebench.compose import load_config
from moebench.record import REPO_ROOT, SCHEMA_VERSION, config_hash
from moebench.record_schema import RunRecord, committed_schema, generated_schema
from moebench.results import load_results, read_records, setup_config
from moebench.run import run

COMMITTED = REPO_ROOT / "results" / "runs"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    """The record of a short run."""
    runs = tmp_path_factory.mktemp("written") / "runs"
    cfg = load_config(f"results_dir={runs}", "trainer.max_steps=2", "trainer.batch_tokens=64",
                      "trainer.eval_batches=1", "task.oracle_baseline=false")
    return json.loads(run(cfg).read_text())


# A version-1 record as a run wrote it (PTB, PEER, seed 2; once in results/runs,
# replaced there by a rerun): the reruns leave no committed record to test
# the migration on.
V1_RECORD = Path(__file__).parent / "data" / "record-v1.json"


def committed_v1_record() -> dict:
    record = json.loads(V1_RECORD.read_text())
    assert record["schema_version"] == 1
    return record


def test_the_committed_schema_is_the_generated_one():
    assert committed_schema() == generated_schema(), (
        "regenerate: python -m moebench.record_schema > moebench/schema/record-v2.schema.json")
    assert committed_schema()["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_a_run_writes_a_record_of_the_current_version(written):
    assert RunRecord.model_validate(written).schema_version == SCHEMA_VERSION


DELETE = object()


def edited(record: dict, key: str, value: object = DELETE) -> dict:
    """A copy of ``record`` with the dotted ``key`` set to ``value``, or deleted."""
    changed = copy.deepcopy(record)
    *parents, leaf = key.split(".")
    node = changed
    for parent in parents:
        node = node[parent]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return changed


@pytest.mark.parametrize("key, value", [
    ("started_at", DELETE), ("data_files", DELETE), ("env.hardware", DELETE),
    ("metrics.quality_metric", DELETE),
    ("strated_at", "2026-01-01T00:00:00+00:00"),  # a misspelt field
    ("ended_at", "2026-01-01T00:00:00"),  # no time zone
    ("seed", True), ("status", "done"), ("schema_version", 1),
    ("data_files", {"ptb/ptb.train.txt": "not a sha256"}), ("env.hardware.cpu_cores", 0),
    ("command.argv", "python -m moebench"),
])
def test_the_model_refuses_a_record_that_is_wrong(written, key, value):
    RunRecord.model_validate(edited(written, "run_id", "another"))  # an edit that is fine
    with pytest.raises(ValidationError):
        RunRecord.model_validate(edited(written, key, value))


def test_version_1_and_2_records_load_together(written, tmp_path):
    old = committed_v1_record()
    runs = tmp_path / "runs"
    runs.mkdir()
    for record in (old, written):
        (runs / f"{record['run_id']}.json").write_text(json.dumps(record))
    (runs / "future.json").write_text(json.dumps({**written, "run_id": "x", "schema_version": 3}))

    results = load_results(tmp_path)
    assert sorted(results.runs["run_id"]) == sorted([old["run_id"], written["run_id"]])
    assert results.skipped == (("runs/future.json", "unknown schema version 3 (this moebench reads 1, 2)"),)
    records = {record["run_id"]: record for _, record in read_records(tmp_path)[0]}
    migrated = records[old["run_id"]]
    assert migrated["schema_version"] == SCHEMA_VERSION
    assert migrated["started_at"] is None and migrated["data_files"] is None
    assert migrated["env"]["hardware"] is None and migrated["env"]["git_sha"] == old["env"]["git_sha"]
    assert records[written["run_id"]] == written


def test_every_committed_record_loads():
    found, skipped = read_records(COMMITTED)
    assert skipped == [] and len(found) == len(list(COMMITTED.glob("*.json")))


@pytest.mark.parametrize("neutral", [{"logger": {"name": "wandb", "project": "x", "mode": "offline"}},
                                     {"trainer": {"lr": 1e-3, "quiet": True}}])
def test_tracking_and_quiet_output_change_neither_the_hash_nor_the_setup(neutral):
    config = {"seed": 0, "router": {"name": "top1"}, "trainer": {"lr": 1e-3}}
    logged = {**config, **neutral}
    assert config_hash(logged) == config_hash(config)
    assert setup_config({"config": logged}) == setup_config({"config": config})
