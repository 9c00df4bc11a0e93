"""Benchmark the training step of every router against the equal-FLOPs dense baseline.

    moebench-bench-train                      # -> results/bench/train_step_cpu.json
    moebench-bench-train --grouping position  # also moe.routing_groups=position
    moebench-bench-train --tasks synthetic --routers top1,top2 --repeats 3

Every (task family, router) model is built as a run builds it (the ``tiny``
preset, the trainer's batch, AdamW and learning-rate schedule) and timed on
:func:`moebench.train.train_step`, the step training runs: forward, backward,
gradient clipping and the update; the batch is drawn before the clock starts.
Within a task family all models live side by side and the repeats are
interleaved (one step of each setup, then again), so that drift in the machine
hits all alike; figures are medians over the repeats, with min and max, and
ratios, always within a task family, come from the medians of this one run.
(One family at a time keeps memory down: word LMs carry large embeddings
and optimizer states.) The baseline is ``router=dense router.params=active``: one
FFN of width router.k * d_ff, top-1's active FLOPs.

FLOPs: ``train_flops_per_token`` means what it means in a run record, the
forward FLOPs per token of the timed training forwards as executed
(:func:`moebench.metrics.flops.forward_flops` with ``training``), their mean.
A training step costs 3x that (forward, backward for activations and weights),
so achieved FLOP/s = 3 * train_flops_per_token * tokens/s.

Causal tasks: a router that compares tokens (expert choice, Soft MoE, BASE,
S-BASE) lets a position see later ones under ``moe.routing_groups=all``, which
a run refuses unless ``router.allow_leaky=true``. This benchmark measures
speed, not quality, so it allows them; each entry's ``future_leak`` names the
leak. ``--grouping position`` also times every MoE router with
``moe.routing_groups=position``, the causal way (its entries carry
``step_s_vs_all``: its median step over the ungrouped one's); Soft MoE's slots
are then sized for a position group of B tokens (conf/router/soft.yaml).

The interleaved setups share torch's global random stream (top-2's second
expert, noise, sampling), so their routing differs from a run's by chance:
this measures the speed of runs, not their numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from moebench.commands.bench import sync, write_atomic
from moebench.commands.options import fail, names_option
from moebench.compose import explain, load_config
from moebench.config import RunConfig
from moebench.errors import ConfigError, DataError
from moebench.metrics.flops import TrainFlops, forward_flops
from moebench.models.ffn import FFNFactory
from moebench.moe.block import MoEBlock
from moebench.moe.grouping import future_leak
from moebench.record import REPO_ROOT, environment
from moebench.commands.regress import slice_routers
from moebench.routers import ROUTERS
from moebench.tasks import TASKS, Task
from moebench.train import make_optimizer, train_step

TASK_FAMILIES = ("synthetic", "shakespeare_char", "wikitext2", "wikitext2_mlm")
BASELINE = "dense"  # with router.params=active
MODEL = "tiny"


@dataclass
class Setup:
    """One model in training, built as a run builds it, and its timed steps."""

    router: str
    grouping: str
    overrides: list[str]
    cfg: RunConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    autocast: torch.autocast
    generator: torch.Generator  # the run's batch order: every router sees the same batches
    steps: int = 0
    seconds: list[float] = field(default_factory=list)
    flops: TrainFlops = field(default_factory=TrainFlops)

    def step(self, task: Task, batch_size: int, device: torch.device, timed: bool) -> None:
        batch = task.get_batch("train", batch_size, self.generator).to(device)
        sync(device)
        start = time.perf_counter()
        done = train_step(self.model, task, batch, self.steps, self.optimizer, self.cfg.trainer,
                          self.autocast)
        sync(device)
        elapsed = time.perf_counter() - start
        if done is None:  # a fresh model: a bug, and a step without its update is no timing
            raise RuntimeError(f"{self.cfg.task.name}/{self.router} ({self.grouping}): "
                               f"NaN/Inf loss or gradients at step {self.steps}")
        self.steps += 1
        if timed:
            self.seconds.append(elapsed)
            self.flops.add(forward_flops(self.model, done[1][0], task.tokens_per_example, training=True))


def configure(task: str, router: str, grouping: str,
              args: argparse.Namespace) -> tuple[list[str], RunConfig]:
    """The overrides and RunConfig of ``python -m moebench`` for this setup."""
    overrides = [f"router={router}", f"task={task}", f"model={MODEL}",
                 f"moe.routing_groups={grouping}", f"trainer.device={args.device}",
                 f"trainer.num_threads={args.threads}", f"trainer.batch_tokens={args.batch_tokens}"]
    if router == BASELINE:
        overrides.append("router.params=active")
    if TASKS.get(task).cls.causal:
        overrides.append("router.allow_leaky=true")  # only permits; the leak is recorded
    try:
        return overrides, load_config(*overrides)
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        fail(f"cannot configure {task}/{router}: {explain(e)}")


def load_task(name: str, args: argparse.Namespace) -> Task:
    cfg = configure(name, BASELINE, "all", args)[1]
    try:
        return TASKS.get(name).cls(cfg.task, cfg.data, cfg.seed)
    except DataError as e:
        fail(f"task {name} needs its data set ({e}). Set MOEBENCH_DATA, or leave the task out "
             "with --tasks")


def build(task: Task, router: str, grouping: str, args: argparse.Namespace) -> Setup:
    """The model, optimizer and batch order of a run (moebench.train.train)."""
    overrides, cfg = configure(task.cfg.name, router, grouping, args)
    device = torch.device(args.device)
    torch.manual_seed(cfg.seed)
    ffn = FFNFactory(cfg.router, cfg.model, cfg.moe, task.data_stats())
    model = task.build_model(cfg.model, ffn).to(device)
    bfloat16 = cfg.trainer.dtype == "bfloat16"
    return Setup(router, grouping, overrides, cfg, model, make_optimizer(model, cfg.trainer),
                 torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16),
                 torch.Generator().manual_seed(cfg.seed))


def setups(task: Task, routers: list[str], args: argparse.Namespace) -> list[Setup]:
    """The baseline, then each router ungrouped and, with ``--grouping position``,
    position-grouped; a model without an MoE block (dense, PEER) has no routing
    groups to change and is timed once."""
    found = []
    for router in dict.fromkeys([BASELINE, *routers]):
        found.append(build(task, router, "all", args))
        has_groups = any(isinstance(m, MoEBlock) for m in found[-1].model.modules())
        if args.grouping == "position" and has_groups:
            found.append(build(task, router, "position", args))
    return found


def summary(s: Setup, tokens_per_step: int) -> dict:
    median = statistics.median(s.seconds)
    flops = s.flops.summary()["train_flops_per_token"]
    causal = TASKS.get(s.cfg.task.name).cls.causal
    return {
        "task": s.cfg.task.name,
        "router": s.router,
        "grouping": s.grouping,
        "overrides": s.overrides,
        "future_leak": future_leak(ROUTERS.get(s.router).cls, s.cfg.router, s.cfg.moe) if causal else None,
        "tokens_per_step": tokens_per_step,
        "step_s_median": median,
        "step_s_min": min(s.seconds),
        "step_s_max": max(s.seconds),
        "step_s_each": s.seconds,
        "tokens_per_s_median": tokens_per_step / median,
        "tokens_per_s_min": tokens_per_step / max(s.seconds),
        "tokens_per_s_max": tokens_per_step / min(s.seconds),
        "train_flops_per_token": flops,
        "flop_per_s": 3 * flops * tokens_per_step / median,
    }


def add_ratios(entries: list[dict]) -> None:
    """Each entry's tokens/s and FLOP/s over the dense baseline's (of its task);
    a position-grouped entry's median step over its ungrouped one's."""
    by_key = {(e["router"], e["grouping"]): e for e in entries}
    dense = by_key[BASELINE, "all"]
    for e in entries:
        e["tokens_per_s_vs_dense"] = e["tokens_per_s_median"] / dense["tokens_per_s_median"]
        e["flop_per_s_vs_dense"] = e["flop_per_s"] / dense["flop_per_s"]
        if e["grouping"] == "position":
            e["step_s_vs_all"] = e["step_s_median"] / by_key[e["router"], "all"]["step_s_median"]


def bench_task(task: Task, routers: list[str], args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    batch_size = max(1, args.batch_tokens // task.tokens_per_example)  # as train.train
    timed = setups(task, routers, args)
    for i in range(args.warmup + args.repeats):
        phase = "warmup" if i < args.warmup else "repeat"
        print(f"  {task.cfg.name}: {phase} {i + 1}/{args.warmup + args.repeats}, "
              f"{len(timed)} setups", file=sys.stderr)
        for s in timed:
            s.step(task, batch_size, device, timed=i >= args.warmup)
    entries = [summary(s, batch_size * task.tokens_per_example) for s in timed]
    add_ratios(entries)
    return entries


def markdown(record: dict) -> str:
    """The README's table: a row per router (and grouping), a column per task family."""
    results = record["results"]
    tasks = list(dict.fromkeys(e["task"] for e in results))
    rows = list(dict.fromkeys((e["router"], e["grouping"]) for e in results))
    by_key = {(e["task"], e["router"], e["grouping"]): e for e in results}
    args, load = record["arguments"], record["load_average_1min"]
    lines = [
        f"Training step, `{MODEL}` preset, {args['batch_tokens']} tokens a step, "
        f"{record['device_type']}, {args['threads']} thread(s): tokens/s and achieved FLOP/s over "
        f"dense (active)'s, medians of {args['repeats']} interleaved repeats (1-min load average "
        f"{load['start']:.2f} at start, {load['end']:.2f} at end).",
        "",
        "| router | " + " | ".join(tasks) + " |",
        "| --- |" + " --- |" * len(tasks),
    ]
    for router, grouping in rows:
        label = "dense (active)" if router == BASELINE else router
        label += ", position groups" if grouping == "position" else ""
        cells = []
        for task in tasks:
            e = by_key.get((task, router, grouping))
            if e is None:
                cells.append("")
            elif router == BASELINE:
                gflops = e["flop_per_s"] / 1e9
                cells.append(f"{e['tokens_per_s_median']:,.0f} tok/s, {gflops:.2f} GFLOP/s")
            else:
                cell = f"{e['tokens_per_s_vs_dense']:.2f} / {e['flop_per_s_vs_dense']:.2f}"
                if "step_s_vs_all" in e:
                    cell += f" (step {e['step_s_vs_all']:.2f}x ungrouped)"
                cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _at_least(option: str, value: int, minimum: int) -> None:
    if value < minimum:
        fail(str(ConfigError(option, value, f"an integer >= {minimum}")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="moebench-bench-train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks",
                        help=f"comma-separated task families; default: {','.join(TASK_FAMILIES)}")
    parser.add_argument("--routers", help="comma-separated routers; default: every one but oracle "
                                          f"(the baseline {BASELINE} is always timed)")
    parser.add_argument("--grouping", choices=["all", "position"], default="all",
                        help="position: also time each MoE router with moe.routing_groups=position")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each setup first")
    parser.add_argument("--batch-tokens", type=int, default=1024, help="trainer.batch_tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, help="default: results/bench/train_step_<device>.json")
    args = parser.parse_args(argv)
    tasks = names_option("--tasks", args.tasks, TASKS.names()) if args.tasks else list(TASK_FAMILIES)
    routers = names_option("--routers", args.routers, slice_routers())
    _at_least("--repeats", args.repeats, 1)
    _at_least("--warmup", args.warmup, 0)
    _at_least("--threads", args.threads, 1)
    _at_least("--batch-tokens", args.batch_tokens, 1)
    if args.device == "cuda" and not torch.cuda.is_available():
        fail(str(ConfigError("--device", args.device,
                             "cpu: this machine has no CUDA GPU that torch can use")))
    torch.set_num_threads(args.threads)

    record = {
        "schema": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["moebench-bench-train",
                             *(argv if argv is not None else sys.argv[1:])]),
        **environment(args.device),
        "arguments": {"tasks": tasks, "routers": routers, "grouping": args.grouping,
                      "repeats": args.repeats, "warmup": args.warmup,
                      "batch_tokens": args.batch_tokens, "threads": args.threads, "model": MODEL},
        # Other processes on the machine slow small ops most: keep the evidence.
        "load_average_1min": {"start": os.getloadavg()[0]},
        "results": [],
    }
    loaded = [load_task(name, args) for name in tasks]  # missing data fails before any timing
    started = time.perf_counter()
    for i, task in enumerate(loaded):
        print(f"[{i + 1}/{len(loaded)}] {task.cfg.name}", file=sys.stderr)
        record["results"] += bench_task(task, routers, args)
    record["load_average_1min"]["end"] = os.getloadavg()[0]
    record["seconds"] = time.perf_counter() - started
    out = args.out or REPO_ROOT / "results" / "bench" / f"train_step_{args.device}.json"
    write_atomic(out, record)
    print(markdown(record))
    print(f"\nwrote {out} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
