"""CI regression check: a fixed small slice of runs against a baseline measured over seeds.

    moebench-regress                       # run the slice; exit 1 on a regression
    moebench-regress --routers top1,top2 --tasks synthetic   # a quick local subset
    moebench-regress --update              # re-measure the baseline, on purpose

The slice is every registered router but ``oracle`` (which needs the
synthetic task's true clusters) on ``synthetic`` and ``shakespeare_char``,
60 small steps (:data:`SLICE`). A new router joins it by being registered.
The runs go in-process through :func:`moebench.compose.load_config` and
:func:`moebench.run.run` into a temporary folder.

Why a spread and not a number: one thread makes a run repeat bit for bit on
one machine, not across CPUs. Vectorized kernels (AVX-512, AVX2, scalar) round
differently, and after some steps discrete routing decisions diverge, so a
run on another CPU is a perturbed copy of the baseline's run. The baseline
therefore holds every routing-dependent metric for :data:`BASELINE_SEEDS`
seeds (``--update``), and the check runs seed 0 and accepts a value inside
the baseline's two-sided Student-t prediction interval for one more run at
:data:`LEVEL`: ``mean +- t(LEVEL, n-1) * s * sqrt(1 + 1/n)``. A new seed
changes the initialization, the data order and every routing decision, so
the seed spread bounds what a CPU's rounding can do (measured: see the
README, "Regression check"). Worse beyond the interval is a REGRESSION
(exit 1), better beyond it is 'improved' (passes, with a reminder), and an
executed-FLOPs figure outside it either way is CHANGED (exit 1).

What is deterministic by construction is checked exactly: the run's status,
its parameter count, and its analytic FLOPs per token (every component of
the FLOPs breakdown but the routed experts, whose rows are counted as
executed and so depend on drops).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from scipy import stats

from moebench.commands.options import fail, names_option
from moebench.compose import explain, load_config
from moebench.config import RunConfig
from moebench.errors import ConfigError, DataError
from moebench.interrupt import exit_stopped
from moebench.record import REPO_ROOT
from moebench.results import read_records
from moebench.routers import ROUTERS
from moebench.run import interrupted_by, run
from moebench.tasks import TASKS

BASELINE = REPO_ROOT / "results" / "baselines" / "regress.json"
FORMAT = 2  # 1: one value per metric, compared with fixed tolerances
CHECK_SEED = 0
BASELINE_SEEDS = 8
LEVEL = 0.999  # per metric; the slice compares ~120 metrics
SLICE_TASKS = ("synthetic", "shakespeare_char")
NOT_IN_SLICE = ("oracle",)  # routes by the synthetic task's true clusters: no router of its own
SLICE = {
    "common": ["trainer.max_steps=60", "trainer.batch_tokens=1024", "trainer.warmup_steps=10",
               "trainer.eval_every=1000", "trainer.eval_batches=2", "trainer.num_threads=1"],
    "task": {"synthetic": ["task.oracle_baseline=false"], "shakespeare_char": ["model.block_size=64"]},
    # Routers too slow for the time budget at their defaults (PEER: 128
    # retrieved experts per token from 16384): smaller, same code paths.
    "router": {"peer": ["router.num_experts=1024", "router.heads=4", "router.experts_per_head=4"]},
    # Routers that compare tokens see the future of a causal LM; config
    # validation refuses them there unless allowed. The slice checks that
    # numbers do not change, not that they are fair, so it allows them: the
    # same code path as on the synthetic task.
    "causal_and_uses_other_tokens": ["router.allow_leaky=true"],
}
# FLOPs components counted from the rows a layer executed (they move with drops).
ROUTED_FLOPS = ("experts",)


@dataclass(frozen=True)
class Check:
    metric: str
    exact: bool  # deterministic by construction: any change is a regression
    # For spread checks: "task" (the task's quality direction), "lower", or
    # "both" (a change either way fails).
    better: str = "both"


CHECKS = (
    Check("status", exact=True),
    Check("total_params", exact=True),
    Check("analytic_flops_per_token", exact=True),
    Check("quality", exact=False, better="task"),
    Check("drop_rate", exact=False, better="lower"),
    Check("load_cv", exact=False, better="lower"),
    Check("flops_per_token", exact=False, better="both"),
)
FAILING = ("REGRESSION", "CHANGED", "MISSING")


def slice_routers() -> list[str]:
    return [name for name in ROUTERS.names() if name not in NOT_IN_SLICE]


def overrides(router: str, task: str, seed: int) -> list[str]:
    """The command-line overrides of one run of the slice."""
    extra = [*SLICE["task"].get(task, []), *SLICE["router"].get(router, [])]
    if TASKS.get(task).cls.causal and ROUTERS.get(router).cls.uses_other_tokens:
        extra += SLICE["causal_and_uses_other_tokens"]
    return [f"router={router}", f"task={task}", f"seed={seed}", *SLICE["common"], *extra]


def slice_config(router: str, task: str, seed: int, data_root: str | None, results_dir: str) -> RunConfig:
    """The RunConfig of one run of the slice; a router that cannot be configured
    (e.g. registered without its conf/router YAML) fails with one line."""
    data = [] if data_root is None else [f"data.root={data_root}"]
    try:
        return load_config(*overrides(router, task, seed), *data, f"results_dir={results_dir}")
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        fail(f"cannot configure {task}/{router} for the slice: {explain(e)}")


def check_data(tasks: list[str], router: str, data_root: str | None) -> None:
    """Fail in the first seconds, not after the synthetic runs, when data is missing."""
    for task in tasks:
        cfg = slice_config(router, task, CHECK_SEED, data_root, "unused")
        try:
            TASKS.get(task).cls(cfg.task, cfg.data, cfg.seed)
        except DataError as e:
            others = ",".join(t for t in tasks if t != task) or "synthetic"
            fail(f"task {task} needs its data set ({e}). Set MOEBENCH_DATA or --data-root PATH, "
                 f"or leave the task out with --tasks {others}.")


def measure(record: dict) -> dict:
    """The checked figures of one run record."""
    m = record["metrics"]
    breakdown = m.get("flops_breakdown", {})
    figures = {c.metric: _plain(m.get(c.metric)) for c in CHECKS if not c.exact}
    return {**figures, "status": record["status"], "total_params": _plain(m.get("total_params")),
            "analytic_flops_per_token": sum(v for k, v in breakdown.items() if k not in ROUTED_FLOPS),
            "higher_is_better": m["higher_is_better"]}


def run_slice(routers: list[str], tasks: list[str], seeds: list[int],
              data_root: str | None = None) -> dict[str, list[dict]]:
    """``{"task/router": [figures of each seed, in the order of seeds]}`` of fresh runs."""
    threads = torch.get_num_threads()
    jobs = [(t, r, s) for t in tasks for r in routers for s in seeds]
    try:
        with tempfile.TemporaryDirectory(prefix="moebench-regress-") as tmp:
            for i, (task, router, seed) in enumerate(jobs, start=1):
                started = time.perf_counter()
                cfg = slice_config(router, task, seed, data_root, tmp)
                with contextlib.redirect_stdout(io.StringIO()):  # run() prints a summary per run
                    path = run(cfg)
                if stopped_by := interrupted_by(path):  # Ctrl-C: the slice stops, not just this run
                    exit_stopped(stopped_by)
                print(f"[{i}/{len(jobs)}] {task}/{router} seed {seed}: "
                      f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
            records, skipped = read_records(tmp)
    finally:
        torch.set_num_threads(threads)
    for path, reason in skipped:  # e.g. a completed run without a finite quality
        print(f"REGRESSION: the slice wrote a record the results loader rejects ({path}: {reason})",
              file=sys.stderr)
    if skipped:
        raise SystemExit(1)
    by_run: dict[str, dict[int, dict]] = {}
    for _, record in records:
        by_run.setdefault(f"{record['task']}/{record['router']}", {})[record["seed"]] = measure(record)
    return {key: [runs[s] for s in seeds] for key, runs in by_run.items()}


def _plain(value: object) -> object:
    """JSON-safe and comparable: NaN or absent -> None, numpy scalars -> Python."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


# -- the baseline: one entry per run, spread metrics as a list over seeds --------------------

def baseline_entry(key: str, seeds: list[dict]) -> dict:
    """Exact figures must agree over seeds; spread figures are kept per seed."""
    entry = {"higher_is_better": seeds[0]["higher_is_better"]}
    for check in CHECKS:
        values = [figures[check.metric] for figures in seeds]
        if check.exact:
            if len(set(values)) > 1:
                raise SystemExit(f"moebench: error: {key} {check.metric} differs between seeds "
                                 f"({values}); it cannot be checked exactly")
            entry[check.metric] = values[0]
        else:
            entry[check.metric] = values
    return entry


def write_baseline(path: Path, runs: dict[str, dict], seeds: list[int]) -> None:
    baseline = {"about": "moebench-regress --update; see moebench/commands/regress.py",
                "format": FORMAT, "seeds": seeds, "slice": SLICE, "runs": dict(sorted(runs.items())),
                "measured_with": {"torch": torch.__version__,
                                  "kernels": torch.backends.cpu.get_cpu_capability()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")


def read_baseline(path: Path) -> dict | None:
    """The baseline at ``path`` (None if there is none), checked whole before anything runs."""
    if not path.exists():
        return None
    try:
        baseline = json.loads(path.read_text())
        problem = baseline_problem(baseline)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        problem = str(e).splitlines()[0]
    if problem:
        fail(f"--baseline={str(path)!r} is not a usable baseline: {problem}; "
             "re-measure it with moebench-regress --update")
    return baseline


def baseline_problem(baseline: object) -> str | None:
    """What is wrong with a parsed baseline file, or None."""
    if not isinstance(baseline, dict) or not isinstance(baseline.get("runs"), dict):
        return "not an object with a 'runs' object"
    if baseline.get("format") != FORMAT:
        return f"format {baseline.get('format', 1)!r}, this moebench reads format {FORMAT}"
    for key, entry in baseline["runs"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("higher_is_better"), bool):
            return f"runs.{key} is not an object with a boolean higher_is_better"
        for check in CHECKS:
            if check.metric not in entry:
                return f"runs.{key} has no {check.metric}"
            value = entry[check.metric]
            if check.exact and not (value is None or isinstance(value, (str, int, float))):
                return f"runs.{key}.{check.metric} is {value!r}, expected one value"
            if not check.exact and not (isinstance(value, list) and len(value) >= 2 and all(
                    v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in value)):
                return f"runs.{key}.{check.metric} is {value!r}, expected a list of >= 2 finite numbers"
    return None


# -- the verdicts ----------------------------------------------------------------------------

def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width) of the two-sided prediction interval at :data:`LEVEL`
    for one more run; the half-width is at least a millionth of the mean, so
    a figure that is equal over every seed (by construction) allows rounding."""
    n, mean = len(values), statistics.fmean(values)
    t = stats.t.ppf(0.5 + LEVEL / 2, n - 1)
    half = t * statistics.stdev(values) * math.sqrt(1 + 1 / n)
    return mean, max(half, 1e-6 * max(1.0, abs(mean)))


def verdict(check: Check, baseline: object, current: object, higher_is_better: bool) -> str:
    if check.exact:
        return "ok" if baseline == current else "REGRESSION"
    values = [v for v in baseline if v is not None]
    if len(values) < len(baseline) or current is None:  # not measured (e.g. no router)
        return "ok" if not values and current is None else "REGRESSION"
    mean, half = interval(values)
    delta = current - mean
    if abs(delta) <= half:
        return "ok"
    if check.better == "both":
        return "CHANGED"
    higher = higher_is_better if check.better == "task" else False
    return "improved" if (delta > 0) == higher else "REGRESSION"


def compare(baseline: dict[str, dict], current: dict[str, dict], full_slice: bool) -> list[dict]:
    """One row per (run, metric): baseline, current, allowed range, verdict. A run
    without a baseline is 'new' (passes); in a full slice, a baseline run that
    did not run is 'MISSING' (fails)."""
    rows = []
    for key in sorted(set(current) | (set(baseline) if full_slice else set())):
        if key not in baseline or key not in current:
            rows.append({"run": key, "metric": "-", "baseline": "-", "current": "-", "allowed": "-",
                         "verdict": "new" if key in current else "MISSING"})
            continue
        for check in CHECKS:
            base, cur = baseline[key][check.metric], current[key][check.metric]
            rows.append({"run": key, "metric": check.metric, "baseline": _shown(check, base),
                         "current": cur, "allowed": _allowed(check, base),
                         "verdict": verdict(check, base, cur, current[key]["higher_is_better"])})
    return rows


def _shown(check: Check, base: object) -> object:
    values = None if check.exact else [v for v in base if v is not None]
    return base if check.exact else statistics.fmean(values) if values else None


def _allowed(check: Check, base: object) -> str:
    values = None if check.exact else [v for v in base if v is not None]
    if check.exact or not values:
        return "exact"
    mean, half = interval(values)
    return f"{mean - half:.6g}..{mean + half:.6g}"


def reproduced(baseline: dict[str, dict], current: dict[str, dict]) -> tuple[int, int]:
    """How many spread figures equal the baseline's value for the same seed, of
    how many: on the baseline's own kernels a change that stays inside every
    interval (a new initialization order, say) still shows here."""
    pairs = [(baseline[key][c.metric][CHECK_SEED], figures[c.metric])
             for key, figures in current.items() if key in baseline
             for c in CHECKS if not c.exact]
    return sum(base == cur for base, cur in pairs), len(pairs)


def failed(rows: list[dict]) -> bool:
    return any(row["verdict"] in FAILING for row in rows)


def format_table(rows: list[dict]) -> str:
    def cell(value: object) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    columns = ["run", "metric", "baseline", "current", "allowed", "verdict"]
    cells = [columns] + [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in cells)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moebench-regress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--routers", help="comma-separated subset of the slice's routers")
    parser.add_argument("--tasks", help=f"comma-separated subset of {', '.join(SLICE_TASKS)}")
    parser.add_argument("--update", action="store_true",
                        help="re-measure the baseline over --seeds seeds and rewrite it")
    parser.add_argument("--seeds", type=int, default=BASELINE_SEEDS,
                        help="seeds a baseline is measured over (with --update); default: %(default)s")
    parser.add_argument("--baseline", default=str(BASELINE), help="baseline file; default: %(default)s")
    parser.add_argument("--data-root", help="data folder (data.root); default: $MOEBENCH_DATA")
    args = parser.parse_args(argv)
    routers = names_option("--routers", args.routers, slice_routers())
    tasks = names_option("--tasks", args.tasks, list(SLICE_TASKS))
    if args.seeds < 2:
        fail(str(ConfigError("--seeds", args.seeds, "an integer >= 2 (a spread needs two runs)")))
    full_slice = args.routers is None and args.tasks is None
    path = Path(args.baseline)
    baseline = None if args.update and full_slice else read_baseline(path)
    if baseline is None and not args.update:
        fail(f"--baseline={args.baseline!r}: no such file; create it with --update")
    if baseline is not None and baseline.get("slice") != SLICE:
        fail(f"{path} was made with other slice settings than SLICE in moebench/commands/regress.py; if the "
             "change is intended, re-measure it whole: moebench-regress --update")
    if args.update and baseline is not None and baseline["seeds"] != list(range(args.seeds)):
        fail(f"--seeds={args.seeds}: {path} was measured over seeds {baseline['seeds']}; "
             "update a subset with the same seeds, or re-measure it whole")

    check_data(tasks, routers[0], args.data_root)
    started = time.perf_counter()
    seeds = list(range(args.seeds)) if args.update else [CHECK_SEED]
    measured = run_slice(routers, tasks, seeds, args.data_root)
    elapsed = time.perf_counter() - started
    if args.update:  # a subset updates its runs and keeps the others
        kept = {} if baseline is None else baseline["runs"]
        fresh = {key: baseline_entry(key, figures) for key, figures in measured.items()}
        write_baseline(path, {**kept, **fresh}, seeds)
        print(f"wrote {len(fresh)} runs x {len(seeds)} seeds to {path} ({elapsed:.0f}s)")
        return
    current = {key: figures[0] for key, figures in measured.items()}
    rows = compare(baseline["runs"], current, full_slice)
    print(format_table(rows))
    print(f"{len(current)} runs (seed {CHECK_SEED}) in {elapsed:.0f}s on torch's "
          f"{torch.backends.cpu.get_cpu_capability()} kernels, 1 thread; allowed: the {LEVEL:.1%} "
          f"prediction interval of the baseline's {len(baseline['seeds'])} seeds")
    same, figures = reproduced(baseline["runs"], current)
    print(f"seed {CHECK_SEED} reproduces the baseline's seed {CHECK_SEED} exactly in {same} of {figures} "
          f"figures (all of them on the CPU kernels that made it: {baseline['measured_with']['kernels']})")
    if any(row["verdict"] == "improved" for row in rows):
        print("some metrics improved beyond their interval: if intended, record them with --update")
    if failed(rows):
        print("regression against the baseline", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
