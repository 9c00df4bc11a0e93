"""A ``-m`` sweep's progress: as each job ends, how many runs are done,
skipped (already completed: a resumed sweep) and left; at the sweep's end,
one table of its runs. A Hydra callback, registered for every sweep in
conf/config.yaml (``hydra.callbacks.sweep_progress``).

Under the joblib or submitit launcher a job ends in another process, or on
another machine, than the one that starts and ends the sweep, so nothing is
kept in memory: each job writes what became of it to its own file,
``<hydra.sweep.dir>/.sweep_progress/<job number>.json`` (written whole, then
renamed into place), and the counts and the table are read from those files.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from moebench.commands.app import expand_sweeps, sweep_overrides
from moebench.config import RunConfig
from moebench.record import config_hash, find_completed, resolved_config

log = logging.getLogger(__name__)

PROGRESS_DIR = ".sweep_progress"
TOTAL_FILE = "total.json"
COLUMNS = ("job", "router", "task", "seed", "status", "quality", "metric", "drop", "tok/s")
FORMATS = {"quality": "{:.4g}", "drop": "{:.1%}", "tok/s": "{:,.0f}"}


def progress_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir)) / PROGRESS_DIR


def write_whole(path: Path, data: dict) -> None:
    """Write ``path`` so that a reader sees all of it or none of it."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def sweep_size(config: DictConfig) -> int | None:
    """The number of runs the sweep launches, counted as app.preflight counts
    them (an experiment's ``hydra.sweeper.params``, then the command line);
    None where a sweeper samples them (an interval)."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    loader = GlobalHydra.instance().hydra.config_loader
    parsed = sweep_overrides(params, config.hydra.overrides.task, loader)
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return None
    return len(expand_sweeps(parsed))


def job_run_config(config: DictConfig) -> RunConfig:
    """The RunConfig a job's run gets: its config without the ``hydra`` node."""
    cfg = copy.deepcopy(config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_object(cfg)


def newest_record(results_dir: str, digest: str) -> Path | None:
    """The latest record of the run with this config hash: record.new_run_id
    names them ``...-<digest>-<UTC time>-<random>``, so by name is by time."""
    paths = sorted(Path(results_dir).glob(f"*-{digest}-*.json"))
    return paths[-1] if paths else None


def job_outcome(cfg: RunConfig, done_before: bool, job_return: JobReturn) -> dict:
    """What became of one job: its run's identity, status and headline figures.
    ``done_before``: a completed record existed as the job started, so run.run skipped it."""
    outcome: dict[str, Any] = {"router": cfg.router.name, "task": cfg.task.name, "seed": cfg.seed}
    if job_return.status == JobStatus.FAILED:
        error = job_return._return_value  # the exception; reading return_value would raise it
        return {**outcome, "status": "failed", "error": f"{type(error).__name__}: {error}"}
    path = newest_record(cfg.results_dir, config_hash(resolved_config(cfg)))
    if path is None:
        return {**outcome, "status": "no record"}
    record = json.loads(path.read_text())
    m = record["metrics"]
    return {**outcome, "status": "skipped" if done_before else record["status"], "record": str(path),
            "quality": m.get("quality"), "metric": m.get("quality_metric"),
            "drop": m.get("drop_rate"), "tok/s": m.get("train_tokens_per_s")}


def read_outcomes(directory: Path) -> dict[int, dict]:
    """Every job's outcome so far, by job number."""
    return {int(p.stem): json.loads(p.read_text()) for p in directory.glob("*.json")
            if p.stem.isdigit()}


def read_total(directory: Path) -> int | None:
    path = directory / TOTAL_FILE
    return json.loads(path.read_text())["runs"] if path.exists() else None


def progress_line(outcomes: dict[int, dict], total: int | None) -> str:
    ended = len(outcomes)
    skipped = sum(o["status"] == "skipped" for o in outcomes.values())
    failed = sum(o["status"] == "failed" for o in outcomes.values())
    of = f" of {total}" if total is not None else ""
    left = f", {total - ended} left" if total is not None else ""
    return (f"sweep: {ended}{of} runs ended ({ended - skipped - failed} ran, {skipped} skipped as "
            f"already completed, {failed} failed){left}")


def cell(column: str, value: object) -> str:
    if value is None:
        return "-"
    return FORMATS.get(column, "{}").format(value)


def summary_table(outcomes: dict[int, dict], total: int | None) -> str:
    """One row a job, in job order, and the counts (jobs that never reported among those left)."""
    rows = [(str(job), *(cell(c, outcomes[job].get(c)) for c in COLUMNS[1:])) for job in sorted(outcomes)]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    rows = [COLUMNS, tuple("-" * w for w in widths), *rows]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(["sweep summary", *lines, progress_line(outcomes, total)])


class SweepProgressCallback(Callback):
    """Progress lines as a sweep's jobs end, and its summary table at its end.
    Jobs of a single run (no ``-m``) are left alone."""

    def __init__(self) -> None:
        self.done_before = False  # of the job running in this process

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        directory = progress_dir(config)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.json"):  # a sweep directory used again
            old.unlink()
        total = sweep_size(config)
        if total is not None:
            write_whole(directory / TOTAL_FILE, {"runs": total})
            log.info("sweep: %d runs", total)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            cfg = job_run_config(config)
            self.done_before = find_completed(cfg.results_dir, config_hash(resolved_config(cfg))) is not None

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        directory = progress_dir(config)
        directory.mkdir(parents=True, exist_ok=True)
        outcome = job_outcome(job_run_config(config), self.done_before, job_return)
        write_whole(directory / f"{config.hydra.job.num}.json", outcome)
        log.info(progress_line(read_outcomes(directory), read_total(directory)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        directory = progress_dir(config)
        print(summary_table(read_outcomes(directory), read_total(directory)))
