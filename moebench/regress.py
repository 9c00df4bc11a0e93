"""CI regression check: a fixed small slice of runs against committed baselines.

    python -m moebench.regress                       # run the slice; exit 1 on a regression
    python -m moebench.regress --routers top1,top2 --tasks synthetic   # a quick local subset
    python -m moebench.regress --update              # rewrite the baseline, on purpose

The slice is every registered router but ``oracle`` (which needs the
synthetic task's true clusters) on ``synthetic`` and ``shakespeare_char``,
seed 0, 60 small steps (:data:`SLICE`). A new router joins it by being
registered. The runs go in-process through :func:`moebench.cli.load_config`
and :func:`moebench.run.run` into a temporary folder and are read back with
:mod:`moebench.results`. Each metric is compared with
``results/baselines/regress.json`` within its tolerance (:data:`CHECKS`):
worse beyond it is a REGRESSION (exit 1), better beyond it is 'improved'
(passes, with a reminder to record it); status and FLOPs must match exactly.
``--update`` with ``--routers``/``--tasks`` rewrites only those runs' entries.

Reproducibility: the runs use one CPU thread (``trainer.num_threads=1``).
Float sums are split across threads, so their rounding depends on the thread
count; on one thread a run repeats bit for bit, and the tolerances only
absorb what differs between CPUs (vectorized kernels). The caller's thread
count is restored afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from moebench.cli import explain, fail, load_config
from moebench.config import RunConfig
from moebench.errors import ConfigError, DataError
from moebench.record import REPO_ROOT
from moebench.results import load_results
from moebench.routers import ROUTERS
from moebench.run import run
from moebench.tasks import TASKS

BASELINE = REPO_ROOT / "results" / "baselines" / "regress.json"
SLICE_TASKS = ("synthetic", "shakespeare_char")
NOT_IN_SLICE = ("oracle",)  # routes by the synthetic task's true clusters: no router of its own
SLICE = {
    "common": ["seed=0", "trainer.max_steps=60", "trainer.batch_tokens=1024", "trainer.warmup_steps=10",
               "trainer.eval_every=1000", "trainer.eval_batches=2", "trainer.num_threads=1"],
    "task": {"synthetic": ["task.oracle_baseline=false"], "shakespeare_char": ["model.block_size=64"]},
    # Routers too slow for the time budget at their defaults (PEER: 128
    # retrieved experts per token from 16384): smaller, same code paths.
    "router": {"peer": ["router.num_experts=1024", "router.heads=4", "router.experts_per_head=4"]},
    # Routers that compare tokens see the future of a causal LM; config
    # validation refuses them there unless allowed. The slice checks that
    # numbers do not change, not that they are fair, so it allows them: the
    # same code path as on the synthetic task, and far faster than
    # moe.routing_groups=position (BASE's solver per position group).
    "causal_and_uses_other_tokens": ["router.allow_leaky=true"],
}


@dataclass(frozen=True)
class Check:
    metric: str
    tolerance: float  # absolute; 0: any change is a regression
    higher_is_better: bool | None  # None: as the task says (quality)


CHECKS = (
    Check("status", 0, None),
    Check("quality", 5e-3, None),
    Check("drop_rate", 5e-3, False),
    Check("load_cv", 1e-2, False),
    Check("flops_per_token", 0, None),
)


def slice_routers() -> list[str]:
    return [name for name in ROUTERS.names() if name not in NOT_IN_SLICE]


def overrides(router: str, task: str) -> list[str]:
    """The command-line overrides of one run of the slice."""
    extra = [*SLICE["task"].get(task, []), *SLICE["router"].get(router, [])]
    if TASKS.get(task).cls.causal and ROUTERS.get(router).cls.uses_other_tokens:
        extra += SLICE["causal_and_uses_other_tokens"]
    return [f"router={router}", f"task={task}", *SLICE["common"], *extra]


def slice_config(router: str, task: str, data_root: str | None, results_dir: str) -> RunConfig:
    """The RunConfig of one run of the slice; a router that cannot be configured
    (e.g. registered without its conf/router YAML) fails with one line."""
    data = [] if data_root is None else [f"data.root={data_root}"]
    try:
        return load_config(*overrides(router, task), *data, f"results_dir={results_dir}")
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        fail(f"cannot configure {task}/{router} for the slice: {explain(e)}")


def check_data(tasks: list[str], router: str, data_root: str | None) -> None:
    """Fail in the first seconds, not after the synthetic runs, when data is missing."""
    for task in tasks:
        cfg = slice_config(router, task, data_root, "unused")
        try:
            TASKS.get(task).cls(cfg.task, cfg.data, cfg.seed)
        except DataError as e:
            others = ",".join(t for t in tasks if t != task) or "synthetic"
            fail(f"task {task} needs its data set ({e}). Set MOEBENCH_DATA or --data-root PATH, "
                 f"or leave the task out with --tasks {others}.")


def run_slice(routers: list[str], tasks: list[str], data_root: str | None = None) -> dict[str, dict]:
    """``{"task/router": {metric: value}}`` of fresh runs of the slice."""
    threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="moebench-regress-") as tmp:
            for i, (task, router) in enumerate(((t, r) for t in tasks for r in routers), start=1):
                started = time.perf_counter()
                cfg = slice_config(router, task, data_root, tmp)
                with contextlib.redirect_stdout(io.StringIO()):  # run() prints a summary per run
                    run(cfg)
                print(f"[{i}/{len(tasks) * len(routers)}] {task}/{router}: "
                      f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
            runs = load_results(tmp).runs
    finally:
        torch.set_num_threads(threads)
    current = {}
    for row in runs.to_dict("records"):
        values = {c.metric: _plain(row.get(c.metric)) for c in CHECKS}
        current[f"{row['task']}/{row['router']}"] = {**values, "higher_is_better": row["higher_is_better"]}
    return current


def _plain(value: object) -> object:
    """JSON-safe and comparable: NaN or absent -> None, numpy scalars -> Python."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def verdict(check: Check, baseline: object, current: object, higher_is_better: bool) -> str:
    if baseline == current:
        return "ok"
    if check.tolerance == 0 or baseline is None or current is None:
        return "REGRESSION"
    delta = current - baseline
    if abs(delta) <= check.tolerance:
        return "ok"
    higher = higher_is_better if check.higher_is_better is None else check.higher_is_better
    return "improved" if (delta > 0) == higher else "REGRESSION"


def compare(baseline: dict[str, dict], current: dict[str, dict], full_slice: bool) -> list[dict]:
    """One row per (run, metric): baseline, current, tolerance, verdict. A run
    without a baseline is 'new' (passes); in a full slice, a baseline run that
    did not run is 'missing' (fails)."""
    rows = []
    for key in sorted(set(current) | (set(baseline) if full_slice else set())):
        if key not in baseline or key not in current:
            rows.append({"run": key, "metric": "-", "baseline": "-", "current": "-", "tolerance": "-",
                         "verdict": "new" if key in current else "MISSING"})
            continue
        for check in CHECKS:
            base, cur = baseline[key].get(check.metric), current[key][check.metric]
            rows.append({"run": key, "metric": check.metric, "baseline": base, "current": cur,
                         "tolerance": check.tolerance,
                         "verdict": verdict(check, base, cur, current[key]["higher_is_better"])})
    return rows


def failed(rows: list[dict]) -> bool:
    return any(row["verdict"] in ("REGRESSION", "MISSING") for row in rows)


def format_table(rows: list[dict]) -> str:
    def cell(value: object) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    columns = ["run", "metric", "baseline", "current", "tolerance", "verdict"]
    cells = [columns] + [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in cells)


def write_baseline(path: Path, runs: dict[str, dict]) -> None:
    baseline = {"about": "python -m moebench.regress --update; see moebench/regress.py",
                "slice": SLICE, "runs": dict(sorted(runs.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")


def read_baseline(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(f"--baseline={str(path)!r} is not a readable baseline: {e}")


def _names(option: str, text: str | None, allowed: list[str]) -> list[str]:
    if text is None:
        return allowed
    names = text.split(",")
    for name in names:
        if name not in allowed:
            fail(str(ConfigError(option, name, allowed)))
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moebench.regress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--routers", help="comma-separated subset of the slice's routers")
    parser.add_argument("--tasks", help=f"comma-separated subset of {', '.join(SLICE_TASKS)}")
    parser.add_argument("--update", action="store_true", help="rewrite the baseline with this run's values")
    parser.add_argument("--baseline", default=str(BASELINE), help="baseline file; default: %(default)s")
    parser.add_argument("--data-root", help="data folder (data.root); default: $MOEBENCH_DATA")
    args = parser.parse_args(argv)
    routers = _names("--routers", args.routers, slice_routers())
    tasks = _names("--tasks", args.tasks, list(SLICE_TASKS))
    full_slice = args.routers is None and args.tasks is None
    path = Path(args.baseline)
    baseline = read_baseline(path)
    if baseline is None and not args.update:
        fail(f"--baseline={args.baseline!r}: no such file; create it with --update")
    if baseline is not None and baseline.get("slice") != SLICE and not (args.update and full_slice):
        fail(f"{path} was made with other slice settings than SLICE in moebench/regress.py; if the "
             "change is intended, rewrite it whole: python -m moebench.regress --update")

    check_data(tasks, routers[0], args.data_root)
    started = time.perf_counter()
    current = run_slice(routers, tasks, args.data_root)
    elapsed = time.perf_counter() - started
    if args.update:  # a subset updates its runs and keeps the others
        kept = {} if full_slice or baseline is None else baseline["runs"]
        write_baseline(path, {**kept, **current})
        print(f"wrote {len(current)} runs to {path} ({elapsed:.0f}s)")
        return
    rows = compare(baseline["runs"], current, full_slice)
    print(format_table(rows))
    print(f"{len(current)} runs in {elapsed:.0f}s; torch on 1 thread")
    if any(row["verdict"] == "improved" for row in rows):
        print("some metrics improved beyond their tolerance: if intended, record them with --update")
    if failed(rows):
        print("regression against the baseline", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
