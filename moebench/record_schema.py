"""The run record as one typed model, and the JSON Schema generated from it.

Two levels, the second an extension of the first:

* :class:`ReportedRecord` -- what the reports read, which a record of every
  schema version holds; moebench/results.py checks each file against it, so
  a record it reads never breaks a table.
* :class:`RunRecord` -- every field a run writes at
  :data:`~moebench.record.SCHEMA_VERSION`, all required and no others:
  moebench/run.py checks each record against it before writing, so a field
  that is missing, misnamed or mistyped fails there (and in the tests), not
  in a reader months later. It describes what a run wrote, not whether the
  run can be ranked: a completed run without a finite quality is written,
  and left out by the loader.

The schema of :class:`RunRecord` is committed as
``moebench/schema/record-v2.schema.json``; regenerate it with

    python -m moebench.record_schema > moebench/schema/record-v2.schema.json

and a test checks that the committed file is the generated one.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from typing import Annotated, Any, Literal

from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo,
                      field_validator)
from pydantic_core import ErrorDetails

from moebench.record import SCHEMA_VERSION

SCHEMA_FILE = f"schema/record-v{SCHEMA_VERSION}.schema.json"  # inside the package
READABLE_VERSIONS = (1, SCHEMA_VERSION)  # older ones are migrated on reading: migrate()
# What a task or router name may be: a file name on any system, and no path
# (the task names figure files). Anchored for JSON Schema; Python's fullmatch
# keeps "top1\n" out, which $ alone would let through.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
NAME = re.compile(NAME_PATTERN)
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# A number where a measurement may be missing: null (NaN or infinite when written).
Number = float | None


class Part(BaseModel):
    """Strict types (a seed of true is not a seed, "3" not a step); keys beyond
    the declared ones are kept: metrics and curves grow with the suite."""

    model_config = ConfigDict(strict=True, extra="allow")


class LayerMetrics(Part):
    load_E: list[Number] = Field(default=[], description="assignments per expert")
    cluster_expert: list[list[Number]] = Field(
        default=[], description="synthetic task: tokens of cluster k whose top expert is e")


class Metrics(Part):
    quality_metric: str
    higher_is_better: bool
    quality: Number = None  # missing in a diverged or interrupted run
    per_layer: list[LayerMetrics] = []
    drop_rate_by_position: list[Number] = []


class CurvePoint(Part):
    step: int


class LossPoint(Part):
    last_step: int


class ReportedRecord(Part):
    """What the reports read; every schema version holds it."""

    schema_version: int
    run_id: str
    status: Literal["completed", "diverged", "interrupted"]
    router: str = Field(json_schema_extra={"pattern": NAME_PATTERN})
    task: str = Field(json_schema_extra={"pattern": NAME_PATTERN})
    seed: int
    config: dict[str, Any] = Field(description="the resolved configuration")
    env: dict[str, Any]
    metrics: Metrics
    curves: list[CurvePoint]
    train_loss_curve: list[LossPoint] = []  # absent from the oldest version 1 records

    @field_validator("router", "task")
    @classmethod
    def _a_name(cls, value: str, info: ValidationInfo) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"{info.field_name} {value!r} is not a name (a-z, 0-9, _ and -, up to 64)")
        return value


class Hardware(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    cpu_model: str | None = Field(description="from /proc/cpuinfo, else the platform's name")
    cpu_cores: int = Field(ge=1, description="the cores the process could use")
    gpus: list[str] = Field(description="the CUDA devices it saw, by name")


class Environment(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    git_sha: str | None = Field(description=(
        "moebench's commit, where it ran from its own git repository (the folder holding the "
        "package is the repository's top, its pyproject.toml names moebench); else null"))
    git_dirty: bool | None = Field(description="tracked files differed from git_sha")
    moebench: str | None = Field(description="the installed moebench's version; null if not installed")
    python: str
    torch: str
    triton: str | None
    device: str
    device_type: str
    cpu_threads: int
    hardware: Hardware


class Command(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    argv: list[str] = Field(description="the process's sys.argv (in a launcher's worker, the worker's)")
    overrides: list[str] | None = Field(
        description="the Hydra job's overrides; null where no Hydra app ran it (the Python API)")


class RunRecord(ReportedRecord):
    """A run record as a run writes it."""

    model_config = ConfigDict(extra="forbid", title=f"moebench run record, schema version {SCHEMA_VERSION}",
                              json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"})

    schema_version: Literal[SCHEMA_VERSION]
    config_hash: str = Field(description="digest of the config's result-changing keys")
    interrupted_by: Literal["SIGINT", "SIGTERM"] | None
    env: Environment
    train_loss_curve: list[LossPoint]
    started_at: AwareDatetime = Field(strict=False, description="UTC, ISO 8601")
    ended_at: AwareDatetime = Field(strict=False, description="UTC, ISO 8601, as the record was made")
    wall_time_s: float = Field(ge=0, description="from start to record, on a monotonic clock")
    command: Command
    data_files: dict[str, Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]] = Field(
        description="sha256 of each file the run read, by path under the data root; {} if none")


def migrate(record: dict) -> dict:
    """``record`` (of a :data:`READABLE_VERSIONS`) in version 2's shape, the
    file untouched: what version 2 added reads as null, not recorded. A
    version 1 git_sha is that of whichever repository held the package,
    moebench's own for every committed record."""
    if record["schema_version"] == 1:
        added = dict.fromkeys(("started_at", "ended_at", "wall_time_s", "command", "data_files"))
        env = {**record["env"], "moebench": None, "hardware": None}
        return {**record, **added, "env": env, "schema_version": 2}
    return record


def error_reason(error: ErrorDetails) -> str:
    """One line saying where a record is wrong and how."""
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "value_error":  # our own checks: their message says it all
        return str(error["ctx"]["error"])
    if error["type"] == "missing":
        return f"{where} is missing"
    if isinstance(error["input"], (dict, list)):  # too long to show
        return f"{where}: {error['msg']}"
    return f"{where} is {error['input']!r}: {error['msg']}"


def committed_schema() -> dict:
    return json.loads(files("moebench").joinpath(SCHEMA_FILE).read_text())


def generated_schema() -> dict:
    return RunRecord.model_json_schema()


if __name__ == "__main__":
    print(json.dumps(generated_schema(), indent=1))
