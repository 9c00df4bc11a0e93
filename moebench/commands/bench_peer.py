"""Benchmark one PEER layer's training step: time and peak memory by pool size.

    moebench-bench-peer                  # CPU  -> results/bench/peer_cpu.json
    moebench-bench-peer --device cuda    # GPU  -> results/bench/peer_cuda.json

A PEER layer (moe/peer.py) at N = 256^2, 512^2 and 1024^2 experts on random
inputs. Each repeat is one training step as moebench.train runs it: forward,
backward into fresh gradients, the NaN/Inf check, gradient clipping and the
optimizer's step (``make_optimizer``: AdamW for the router, lazy Adam for the
u and v tables, whose gradients are sparse: the retrieved rows). The first
repeat is a warm-up (it also allocates the optimizer's moments), the others
give medians; ``train_step_ratio`` is a step's time over that of the smallest
N: it stays near 1 when nothing in the step grows with N.
``train_flops_per_s`` counts 3x the layer's analytic forward FLOPs
(``flops_per_token``, as training budgets do) per training step.

Peak memory is that of the step above what was resident before it (tables,
moments, inputs): on CUDA the allocator's peak; on CPU the process's
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs
before each repeat, Linux only). Activations and gradients grow with
T H k D and with the sub-key scores [T, H, sqrt(N)], never with N: a
[T, H, N] score tensor would take T H N 4 bytes (64 GiB at the default shape
and N = 1024^2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import time
from pathlib import Path

import torch

from moebench.config import TrainerConfig
from moebench.moe.peer import PEERLayer
from moebench.record import environment
from moebench.routers.base import RouterContext
from moebench.routers.peer import PeerConfig, ProductKeyRouter
from moebench.train import clip_grad_norm, grads_finite, make_optimizer

MIB = 2**20


def resident_mib(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def reset_peak(device: torch.device) -> float:
    """Start a new peak; returns the memory in use now (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / MIB
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return resident_mib("VmRSS")


def peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return resident_mib("VmHWM")


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def bench_one(num_experts: int, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    cfg = PeerConfig(name="peer", num_experts=num_experts, heads=args.heads,
                     experts_per_head=args.experts_per_head, d_key=args.d_key)
    layer = PEERLayer(ProductKeyRouter(cfg, args.d_model), num_experts, args.d_model).to(device)
    trainer = TrainerConfig()
    optimizer = make_optimizer(layer, trainer)
    x_TD = torch.randn(args.tokens, args.d_model, device=device, requires_grad=True)
    times: dict[str, list[float]] = {"forward_ms": [], "backward_ms": [], "optimizer_ms": []}
    step_mib = []
    for _ in range(args.repeats + 1):
        optimizer.zero_grad(set_to_none=True)
        x_TD.grad = None
        before = reset_peak(device)
        t0 = clock(device)
        y_TD, stats = layer(x_TD, RouterContext())
        t1 = clock(device)
        y_TD.square().mean().backward()
        t2 = clock(device)
        assert grads_finite(layer)
        clip_grad_norm(layer, trainer.grad_clip)
        optimizer.step()
        t3 = clock(device)
        for name, (start, end) in zip(times, ((t0, t1), (t1, t2), (t2, t3))):
            times[name].append(1e3 * (end - start))
        step_mib.append(peak(device) - before)
    step_ms = [sum(parts) for parts in zip(*times.values())][1:]
    flops_per_step = 3 * sum(layer.flops_per_token(stats).values()) * args.tokens
    return {
        "num_experts": num_experts,
        **{name: statistics.median(ms[1:]) for name, ms in times.items()},
        "train_step_ms": statistics.median(step_ms),
        "train_flops_per_s": flops_per_step / (statistics.median(step_ms) / 1e3),
        "tables_mib": 2 * layer.down_ND.numel() * layer.down_ND.element_size() / MIB,
        "step_peak_mib": statistics.median(step_mib[1:]),
        "repeats": args.repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--experts", type=int, nargs="+", default=[256**2, 512**2, 1024**2])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--experts-per-head", type=int, default=16)
    parser.add_argument("--d-key", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="default results/bench/peer_<device>.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    for n in args.experts:
        results.append(bench_one(n, args, device))
        results[-1]["train_step_ratio"] = results[-1]["train_step_ms"] / results[0]["train_step_ms"]
        print(json.dumps(results[-1]))
    record = {
        "benchmark": "peer",
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env": environment(args.device),
        "shape": {k: getattr(args, k) for k in ("tokens", "d_model", "heads", "experts_per_head", "d_key")},
        "results": results,
    }
    out = args.out or Path("results/bench") / f"peer_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
