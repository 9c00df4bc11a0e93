"""Benchmark expert parallelism on the CPU: P gloo processes against one, at equal global batch.

    moebench-bench-expert-parallel                 # -> results/bench/expert_parallel_cpu.json
    moebench-bench-expert-parallel --routers top1,soft --repeats 5 --batch-tokens 512

One MoE block of the ``tiny`` preset (d_model 128, 8 experts of width 256),
built for each router as a run builds it, takes training steps on sequences
of ``model.block_size`` tokens: the forward, a loss (the output's mean square
plus the router's auxiliary losses), the backward down to the block's input
(as inside a model), and, expert-parallel, the gradient sync
(moebench/distributed.py). At the same global batch:

- one process: the block with its 8 experts on the whole batch, routed as
  one group, as a one-process run routes it;
- P processes (``--processes``, gloo): each with its shard of the sequences
  and 8 / P of the experts (moe/expert_parallel.py), rows exchanged by
  all-to-all.

A P-process step lasts as long as its slowest process: its time is the
maximum over the processes, which start each step together (a barrier).
Each process's meter gives the seconds it spent in the all-to-alls (split
sizes, dispatch and combine, in the forward and the backward; waiting there
for a slower process included) and the bytes it sent; ``a2a_share`` is that
time over the process's step, and the entry's share is their mean over
processes (medians over the repeats). Every process runs ``--threads``
threads, so P processes use P times the cores of one: the step ratio
compares the setups, not their efficiency per core.

The one-process steps run first, then the P processes, not interleaved
(they would compete for the cores); the 1-minute load average at the start
and the end is kept as evidence of other work on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from moebench.commands.bench import write_atomic
from moebench.commands.options import fail, names_option
from moebench.compose import load_config
from moebench.config import ModelConfig, RunConfig
from moebench.distributed import free_port, gather_from_ranks, init_from_env, sync_gradients
from moebench.errors import ConfigError
from moebench.moe.block import MoEBlock
from moebench.moe.expert_parallel import ExchangeMeter, shard_experts
from moebench.record import REPO_ROOT, environment
from moebench.routers import ROUTERS
from moebench.routers.base import DataStats, RouterContext

# The routers whose expert-parallel training is tested equal to one process's
# (tests/distributed/test_expert_parallel.py).
EP_ROUTERS = ["top1", "top2", "expert_choice", "hash", "soft"]
MODEL = "tiny"
VOCAB = 256  # the token ids hash routing reads
SEED = 0


def router_config(router: str) -> RunConfig:
    return load_config(f"router={router}", "task=synthetic", f"model={MODEL}")


def build_block(cfg: RunConfig) -> MoEBlock:
    """The router's MoE block, built as a run builds it, from the same seed in every process."""
    torch.manual_seed(SEED)
    return ROUTERS.get(cfg.router.name).cls.build_layer(cfg.router, cfg.model, cfg.moe,
                                                        DataStats(vocab_size=VOCAB))


def global_batches(count: int, batch_tokens: int, model: ModelConfig) -> list[tuple[Tensor, Tensor]]:
    """``count`` global batches of hidden states and token ids, in sequences of
    ``model.block_size`` tokens, the same in every process."""
    generator = torch.Generator().manual_seed(SEED)
    B, L = batch_tokens // model.block_size, model.block_size
    return [(torch.randn(B, L, model.d_model, generator=generator),
             torch.randint(VOCAB, (B, L), generator=generator)) for _ in range(count)]


def training_step(block: MoEBlock, x_BLD: Tensor, ids_BL: Tensor, sharded: bool) -> float:
    """Seconds of one forward and backward of the block (and the gradient sync when sharded)."""
    x_BLD = x_BLD.clone().requires_grad_()
    ctx = RouterContext(token_ids_T=ids_BL.reshape(-1), batch_shape=tuple(ids_BL.shape))
    start = time.perf_counter()
    y_BLD, stats = block(x_BLD, ctx)
    loss = y_BLD.square().mean() + sum(stats.aux_losses.values())
    loss.backward()
    if sharded:
        sync_gradients(block)
    elapsed = time.perf_counter() - start
    block.zero_grad(set_to_none=True)
    return elapsed


def time_one_process(router: str, args: argparse.Namespace) -> list[float]:
    cfg = router_config(router)
    block = build_block(cfg)
    batches = global_batches(args.warmup + args.repeats, args.batch_tokens, cfg.model)
    return [training_step(block, x_BLD, ids_BL, sharded=False) for x_BLD, ids_BL in batches][args.warmup:]


def expert_parallel_worker(rank: int, args: argparse.Namespace, master_port: int, out: str) -> None:
    """One of the P processes (torch.multiprocessing.spawn): times every
    router's sharded block; rank 0 writes every process's figures to ``out``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.processes),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port))
    torch.set_num_threads(args.threads)
    init_from_env(torch.device("cpu"))
    P, figures = args.processes, {}
    for router in args.routers:
        cfg = router_config(router)
        block, meter = build_block(cfg), ExchangeMeter()
        shard_experts(block, meter=meter)
        batches = global_batches(args.warmup + args.repeats, args.batch_tokens, cfg.model)
        mine = {"step_s": [], "a2a_s": [], "a2a_bytes_sent": []}
        for i, (x_BLD, ids_BL) in enumerate(batches):
            dist.barrier()  # every process starts the step together
            seconds = training_step(block, x_BLD.chunk(P)[rank], ids_BL.chunk(P)[rank], sharded=True)
            exchange = meter.take()
            if i >= args.warmup:
                mine["step_s"].append(seconds)
                mine["a2a_s"].append(exchange["a2a_seconds"])
                mine["a2a_bytes_sent"].append(exchange["a2a_bytes_sent"])
        figures[router] = gather_from_ranks(mine)
    if rank == 0:
        Path(out).write_text(json.dumps(figures))
    dist.destroy_process_group()


def time_expert_parallel(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Each router's per-process figures, from P spawned processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "figures.json")
        mp.spawn(expert_parallel_worker, args=(args, free_port(), out), nprocs=args.processes)
        return json.loads(Path(out).read_text())


def summary(router: str, one_s: list[float], ranks: list[dict], tokens_per_step: int) -> dict:
    median = statistics.median
    shares = [[a / s for a, s in zip(r["a2a_s"], r["step_s"])] for r in ranks]
    step_each = [max(steps) for steps in zip(*(r["step_s"] for r in ranks))]  # the slowest process
    share_each = [statistics.mean(repeat) for repeat in zip(*shares)]
    return {
        "router": router,
        "tokens_per_step": tokens_per_step,
        "one_process": {"step_s_median": median(one_s), "step_s_each": one_s},
        "expert_parallel": {
            "processes": len(ranks),
            "step_s_median": median(step_each),
            "step_s_each": step_each,
            "a2a_share_median": median(share_each),
            "per_rank": [{"step_s_median": median(r["step_s"]),
                          "a2a_s_median": median(r["a2a_s"]),
                          "a2a_share_median": median(share),
                          "a2a_bytes_sent_per_step": median(r["a2a_bytes_sent"])}
                         for r, share in zip(ranks, shares)],
        },
        "step_s_vs_one_process": median(step_each) / median(one_s),
    }


def markdown(record: dict) -> str:
    args, load = record["arguments"], record["load_average_1min"]
    P = args["processes"]
    lines = [
        f"One `{MODEL}` MoE block in training, {args['batch_tokens']} tokens a step, "
        f"{args['threads']} thread(s) a process: one process against {P} gloo processes "
        f"(medians of {args['repeats']} repeats; 1-min load average {load['start']:.2f} at start, "
        f"{load['end']:.2f} at end).",
        "",
        f"| router | 1 process, step | {P} processes, step | exchange's share "
        "| bytes sent a step, per process |",
        "| --- | --- | --- | --- | --- |",
    ]
    for e in record["results"]:
        ep = e["expert_parallel"]
        sent = statistics.mean(r["a2a_bytes_sent_per_step"] for r in ep["per_rank"])
        lines.append(f"| {e['router']} | {1e3 * e['one_process']['step_s_median']:.1f} ms | "
                     f"{1e3 * ep['step_s_median']:.1f} ms ({e['step_s_vs_one_process']:.2f}x) | "
                     f"{100 * ep['a2a_share_median']:.0f}% | {sent / 1e3:,.0f} kB |")
    return "\n".join(lines)


def check_arguments(args: argparse.Namespace) -> None:
    for option, value, minimum in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                                   ("--threads", args.threads, 1), ("--processes", args.processes, 2),
                                   ("--batch-tokens", args.batch_tokens, 1)):
        if value < minimum:
            fail(str(ConfigError(option, value, f"an integer >= {minimum}")))
    cfg = router_config(args.routers[0])
    E, L = cfg.moe.num_experts, cfg.model.block_size
    if E % args.processes:
        fail(str(ConfigError("--processes", args.processes, f"a divisor of the {E} experts")))
    if args.batch_tokens % (L * args.processes):
        fail(str(ConfigError("--batch-tokens", args.batch_tokens,
                             f"a multiple of {L} tokens (a sequence) times --processes, "
                             "so that every process gets as many sequences")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moebench-bench-expert-parallel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routers", help=f"comma-separated; default: {','.join(EP_ROUTERS)}")
    parser.add_argument("--processes", type=int, default=2, help="expert-parallel processes")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each setup first")
    parser.add_argument("--batch-tokens", type=int, default=1024, help="the global batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process")
    parser.add_argument("--out", type=Path, help="default: results/bench/expert_parallel_cpu.json")
    args = parser.parse_args(argv)
    args.routers = names_option("--routers", args.routers, EP_ROUTERS)
    check_arguments(args)
    torch.set_num_threads(args.threads)

    record = {
        "schema": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["moebench-bench-expert-parallel",
                             *(argv if argv is not None else sys.argv[1:])]),
        **environment("cpu"),
        "arguments": {"routers": args.routers, "processes": args.processes, "repeats": args.repeats,
                      "warmup": args.warmup, "batch_tokens": args.batch_tokens,
                      "threads": args.threads, "model": MODEL},
        "load_average_1min": {"start": os.getloadavg()[0]},
    }
    started = time.perf_counter()
    one_process = {router: time_one_process(router, args) for router in args.routers}
    sharded = time_expert_parallel(args)
    record["load_average_1min"]["end"] = os.getloadavg()[0]
    record["seconds"] = time.perf_counter() - started
    record["results"] = [summary(r, one_process[r], sharded[r], args.batch_tokens) for r in args.routers]
    out = args.out or REPO_ROOT / "results" / "bench" / "expert_parallel_cpu.json"
    write_atomic(out, record)
    print(markdown(record))
    print(f"\nwrote {out} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
