"""Benchmark the MoE block's experts against its baselines, side by side.

    moebench-bench --device cpu    # the CPU set -> results/bench/cpu.json
    moebench-bench --device cuda   # ScatterMoE's and SonicMoE's shapes, bf16

(results/bench/cpu.json was made with ``--threads 1``: see ``--threads``.)
This times one layer; ``moebench-bench-train`` times whole training
steps of every router's model against the dense baseline.

Every method computes the same layer on the same random top-k routing
(random logits: a uniform-ish load), from routing weights to the combined
output, permutation included. Repeats are interleaved (method after method,
then again) so that drift in the machine hits all methods alike, and ratios
come from medians of one run. The methods:

    moe-torch          expert_ffn_torch, one matmul pair per expert: the reference
    moe-grouped_mm     torch._grouped_mm, where the installed torch has it
    moe-triton         expert_ffn_triton (CUDA only: the interpreter is for tests)
    scattermoe         ScatterMoE's kernels (Tan et al. 2024, arXiv:2403.08245),
                       from the fms-acceleration-moe package
    dense-softmax-moe  the textbook MoE (Jacobs et al. 1991): every expert on
                       every token, mixed by the softmax
    dense-ffn          one FFN of width k*F: the same active FLOPs
    dense-matmul       one matmul of the same FLOPs: the hardware's ceiling

FLOPs count the two GEMMs of the rows each method actually computes
(``2 * rows * D * (H + F)`` forward, three times that forward+backward);
elementwise work is not counted.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from moebench.moe.dispatch import sort_by_expert
from moebench.moe.experts import FeedForward, activate, expert_ffn_torch
from moebench.record import REPO_ROOT, environment
from moebench.routers.token_choice import topk_routing


@dataclass(frozen=True)
class Shape:
    tokens: int
    d_model: int
    d_ff: int  # expert width F
    experts: int
    k: int
    dtype: str
    activation: str = "swiglu"

    @property
    def hidden(self) -> int:
        return 2 * self.d_ff if self.activation == "swiglu" else self.d_ff

    def __str__(self) -> str:
        T, D, F, E, k = self.tokens, self.d_model, self.d_ff, self.experts, self.k
        return f"T={T} D={D} F={F} E={E} k={k} {self.dtype} {self.activation}"


SHAPE_SETS = {
    # Small enough for a 2-core CI machine.
    "cpu": [Shape(4096, 256, 512, e, 2, "float32") for e in (8, 64)],
    # ScatterMoE's benchmark: a Mixtral-like layer at growing token counts.
    "scattermoe": [Shape(t, 4096, 1024, 64, 8, "bfloat16") for t in (4096, 8192, 16384, 32768)],
    # SonicMoE (Guo et al. 2025, arXiv:2512.14080): the same active FLOPs at
    # growing granularity, finer and sparser experts.
    "sonicmoe": [
        Shape(32768, 4096, f, e, k, "bfloat16")
        for f, e, k in ((1024, 32, 2), (512, 64, 4), (256, 128, 8))
    ],
}


@dataclass
class Problem:
    """One layer's inputs and weights; the leaves get gradients in fwd+bwd."""

    shape: Shape
    x_TD: Tensor
    probs_TE: Tensor  # random logits' softmax: a uniform-ish load
    w_in_EDH: Tensor
    w_out_EFD: Tensor
    ffn: FeedForward
    w_matmul_DN: Tensor

    @classmethod
    def random(cls, shape: Shape, device: torch.device, seed: int) -> Problem:
        torch.manual_seed(seed)
        kw = {"device": device, "dtype": getattr(torch, shape.dtype)}
        D, F, H, E = shape.d_model, shape.d_ff, shape.hidden, shape.experts
        return cls(
            shape=shape,
            x_TD=torch.randn(shape.tokens, D, **kw),
            probs_TE=torch.randn(shape.tokens, E, device=device).softmax(-1),
            w_in_EDH=torch.randn(E, D, H, **kw) / D**0.5,
            w_out_EFD=torch.randn(E, F, D, **kw) / F**0.5,
            ffn=FeedForward(D, shape.k * F, shape.activation).to(**kw),
            w_matmul_DN=torch.randn(D, shape.k * (H + F), **kw) / D**0.5,
        )

    def leaves(self) -> list[Tensor]:
        return [
            self.x_TD,
            self.probs_TE,
            self.w_in_EDH,
            self.w_out_EFD,
            self.w_matmul_DN,
            *self.ffn.parameters(),
        ]


ExpertFFN = Callable[..., Tensor]  # the signature of expert_ffn_torch


def sparse_moe(expert_ffn: ExpertFFN) -> Callable[[Problem], Tensor]:
    """Routing -> rows sorted by expert (no host sync) -> ``expert_ffn``."""

    def run(p: Problem) -> Tensor:
        routing = topk_routing(p.probs_TE, p.shape.k, renormalize=False)
        A = routing.expert_idx_A.numel()
        # Choice-major assignments are already in priority order; dropless.
        perm = sort_by_expert(
            routing.expert_idx_A, torch.arange(A, device=p.x_TD.device), p.shape.experts, None
        )
        token_R, weight_R = routing.token_idx_A[perm.order_A], routing.weight_A[perm.order_A]
        return expert_ffn(
            p.x_TD, p.w_in_EDH, p.w_out_EFD, token_R, perm.counts_E, weight_R, p.shape.activation
        )

    return run


def expert_ffn_grouped_mm(x_TD: Tensor, w_in_EDH: Tensor, w_out_EFD: Tensor, token_idx_R: Tensor,
                          counts_E: Tensor, weight_R: Tensor, activation: str) -> Tensor:
    """expert_ffn_torch's contract on ``torch._grouped_mm``, for dropless rows."""
    offsets_E = counts_E.cumsum(0).to(torch.int32)
    h_RH = torch._grouped_mm(x_TD[token_idx_R], w_in_EDH, offs=offsets_E)
    out_RD = torch._grouped_mm(activate(h_RH, activation), w_out_EFD, offs=offsets_E)
    weighted_RD = out_RD * weight_R.to(out_RD.dtype)[:, None]
    return torch.zeros_like(x_TD).index_add(0, token_idx_R, weighted_RD)


def grouped_mm_missing(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``torch._grouped_mm`` cannot run here (it is private, and CUDA wants bf16 on sm90+)."""
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm"
    offsets = torch.tensor([8, 16], device=device, dtype=torch.int32)
    try:
        torch._grouped_mm(
            torch.zeros(16, 16, device=device, dtype=dtype),
            torch.zeros(2, 16, 16, device=device, dtype=dtype),
            offs=offsets,
        )
    except RuntimeError as e:
        return f"torch._grouped_mm fails here: {e}"
    return None


def dense_softmax_moe(p: Problem) -> Tensor:
    h_ETH = torch.matmul(p.x_TD, p.w_in_EDH)  # every token through every expert
    out_ETD = torch.bmm(activate(h_ETH, p.shape.activation), p.w_out_EFD)
    return torch.einsum("te,etd->td", p.probs_TE.to(out_ETD.dtype), out_ETD)


def scattermoe(p: Problem) -> Tensor:
    from fms_acceleration_moe.utils.scattermoe_utils.khd.kernels.ops import (
        padded_block_indices,
        scattered_experts,
    )

    weights_TK, experts_TK = p.probs_TE.topk(p.shape.k, dim=-1)
    sorted_expert, sorted_slot = torch.sort(experts_TK.flatten())
    blocks, offsets = padded_block_indices(sorted_expert, p.shape.experts)
    args = (sorted_expert, sorted_slot, blocks, offsets)
    h = scattered_experts(p.x_TD, p.w_in_EDH, p.shape.k, *args, grouped_out=True)
    h = activate(h, p.shape.activation)
    gates_TK = weights_TK.to(h.dtype)
    return scattered_experts(h, p.w_out_EFD, 1, *args, gates=gates_TK, grouped_in=True)


def methods(
    device: torch.device, dtype: torch.dtype
) -> dict[str, Callable[[Problem], Tensor] | str]:
    """Each method, or the reason it cannot run here."""
    found: dict[str, Callable[[Problem], Tensor] | str] = {
        "moe-torch": sparse_moe(expert_ffn_torch),
        "moe-grouped_mm": grouped_mm_missing(device, dtype) or sparse_moe(expert_ffn_grouped_mm),
    }
    if device.type == "cuda":
        from moebench.kernels import expert_ffn_triton

        found["moe-triton"] = sparse_moe(expert_ffn_triton)
    else:
        found["moe-triton"] = "needs CUDA (the Triton interpreter is for tests, not timing)"
    try:
        import fms_acceleration_moe  # noqa: F401

        found["scattermoe"] = scattermoe if device.type == "cuda" else "needs CUDA"
    except ImportError as e:
        found["scattermoe"] = f"fms-acceleration-moe does not import here: {e}"
    found["dense-softmax-moe"] = dense_softmax_moe
    found["dense-ffn"] = lambda p: p.ffn(p.x_TD)
    found["dense-matmul"] = lambda p: p.x_TD @ p.w_matmul_DN
    return found


def rows_computed(name: str, shape: Shape) -> int:
    """Token-expert rows whose FFN the method computes (dense ones: equal FLOPs)."""
    return shape.tokens * (shape.experts if name == "dense-softmax-moe" else shape.k)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward(run: Callable[[Problem], Tensor], p: Problem) -> None:
    with torch.no_grad():
        run(p)


def forward_backward(run: Callable[[Problem], Tensor], p: Problem) -> None:
    y_TD = run(p)
    y_TD.backward(torch.ones_like(y_TD))
    for leaf in p.leaves():
        leaf.grad = None


def seconds(step: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def peak_mib(step: Callable[[], None], device: torch.device) -> float:
    """Memory allocated by torch during ``step`` above what was allocated before."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    # No allocator statistics on CPU: replay the profiler's per-op allocations
    # (minus frees) in start order; the running total peaks at the peak.
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        step()
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start
    )
    return max(itertools.accumulate(e.self_cpu_memory_usage for e in events), default=0) / 2**20


# label: (numerator, denominator, pass); both time the same FLOPs or the same layer.
RATIOS = {
    # CPU target: <= 1.3
    "moe-torch / dense-ffn, fwd": ("moe-torch", "dense-ffn", "fwd"),
    "moe-torch / dense-ffn, fwd+bwd": ("moe-torch", "dense-ffn", "fwd_bwd"),
    # how far ahead of running every expert on every token
    "dense-softmax-moe / moe-torch, fwd": ("dense-softmax-moe", "moe-torch", "fwd"),
    "dense-softmax-moe / moe-torch, fwd+bwd": ("dense-softmax-moe", "moe-torch", "fwd_bwd"),
    # GPU targets: >= 1.1 (speed-up over ScatterMoE) and >= 0.7 (share of cuBLAS TFLOP/s)
    "scattermoe / moe-triton, fwd+bwd": ("scattermoe", "moe-triton", "fwd_bwd"),
    "dense-matmul / moe-triton, fwd": ("dense-matmul", "moe-triton", "fwd"),
}


def bench_shape(shape: Shape, device: torch.device, repeats: int, warmup: int, seed: int) -> dict:
    p = Problem.random(shape, device, seed)
    for leaf in p.leaves():
        leaf.requires_grad_()
    found = methods(device, p.x_TD.dtype)
    runnable = {name: run for name, run in found.items() if not isinstance(run, str)}
    reference = runnable["moe-torch"](p).detach()
    for name in ("moe-grouped_mm", "moe-triton", "scattermoe"):
        if name in runnable:  # a fast wrong answer is no result (loose: bf16)
            torch.testing.assert_close(runnable[name](p).detach(), reference, rtol=2e-2, atol=2e-2)

    steps = {"fwd": forward, "fwd_bwd": forward_backward}
    times = {name: {kind: [] for kind in steps} for name in runnable}
    for i in range(warmup + repeats):
        phase = "warmup" if i < warmup else "repeat"
        print(f"  {shape}: {phase} {i + 1}/{warmup + repeats}", file=sys.stderr)
        for name, run in runnable.items():
            for kind, step in steps.items():
                elapsed = seconds(partial(step, run, p), device)
                if i >= warmup:
                    times[name][kind].append(elapsed)

    results: dict[str, dict] = {}
    for name, run in found.items():
        if isinstance(run, str):
            results[name] = {"status": "unavailable", "reason": run}
            continue
        fwd_s, fwd_bwd_s = (statistics.median(times[name][kind]) for kind in steps)
        flops = 2 * rows_computed(name, shape) * shape.d_model * (shape.hidden + shape.d_ff)
        results[name] = {
            "status": "ok",
            "fwd_ms": 1e3 * fwd_s,
            "fwd_bwd_ms": 1e3 * fwd_bwd_s,
            "tokens_per_s_fwd_bwd": shape.tokens / fwd_bwd_s,
            "fwd_tflops": flops / fwd_s / 1e12,
            "fwd_bwd_tflops": 3 * flops / fwd_bwd_s / 1e12,
            "peak_mib_fwd_bwd": peak_mib(partial(forward_backward, run, p), device),
            "fwd_ms_each": [1e3 * s for s in times[name]["fwd"]],
            "fwd_bwd_ms_each": [1e3 * s for s in times[name]["fwd_bwd"]],
        }
    ok = {name for name, r in results.items() if r["status"] == "ok"}
    ratios = {
        label: results[num][f"{kind}_ms"] / results[den][f"{kind}_ms"]
        for label, (num, den, kind) in RATIOS.items()
        if {num, den} <= ok
    }
    return {"shape": asdict(shape), "results": results, "ratios": ratios}


COLUMNS = [
    "fwd_ms",
    "fwd_bwd_ms",
    "tokens_per_s_fwd_bwd",
    "fwd_tflops",
    "fwd_bwd_tflops",
    "peak_mib_fwd_bwd",
]
HEADER = ["method", "fwd ms", "fwd+bwd ms", "tok/s f+b", "TFLOP/s fwd", "TFLOP/s f+b", "peak MiB"]


def table(record: dict) -> str:
    load = record["load_average_1min"]
    lines = [
        f"{record['device']}, torch threads: {record['cpu_threads']}, medians of "
        f"{record['repeats']} repeats, 1-min load average {load['start']:.2f} at start, "
        f"{load['end']:.2f} at end"
    ]
    for entry in record["shapes"]:
        lines += ["", str(Shape(**entry["shape"])), "".join(f"{h:>18}" for h in HEADER)]
        for name, r in entry["results"].items():
            if r["status"] == "ok":
                lines.append(f"{name:>18}" + "".join(f"{r[c]:>18.4g}" for c in COLUMNS))
            else:
                lines.append(f"{name:>18}  unavailable: {r['reason']}")
        lines += [f"  {label}: {value:.3f}" for label, value in entry["ratios"].items()]
    return "\n".join(lines)


def write_atomic(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=list(SHAPE_SETS),
        help="default: cpu, or scattermoe and sonicmoe on cuda",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    # Under load from other processes, 2-thread OpenMP barriers stall the many
    # small per-expert GEMMs far more than one big dense GEMM: --threads 1 then
    # still gives fair ratios.
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="default: results/bench/<device>.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = args.sets or (["cpu"] if device.type == "cpu" else ["scattermoe", "sonicmoe"])
    shapes = [shape for name in sets for shape in SHAPE_SETS[name]]

    record = {
        "schema": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            ["moebench-bench", *(argv if argv is not None else sys.argv[1:])]
        ),
        **environment(args.device),
        "repeats": args.repeats,
        # Other processes on the machine slow small ops most: keep the evidence.
        "load_average_1min": {"start": os.getloadavg()[0]},
        "shapes": [],
    }
    for i, shape in enumerate(shapes):
        print(f"[{i + 1}/{len(shapes)}] {shape}", file=sys.stderr)
        record["shapes"].append(bench_shape(shape, device, args.repeats, args.warmup, args.seed))
    record["load_average_1min"]["end"] = os.getloadavg()[0]
    out = args.out or REPO_ROOT / "results" / "bench" / f"{args.device}.json"
    write_atomic(out, record)
    print(table(record))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
