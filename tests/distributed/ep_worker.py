"""One process of tests/distributed/test_expert_parallel.py, run under torchrun (gloo, 2 processes).

For each router named on the command line, a toy model (a replicated linear
layer, then an MoE block) takes a few SGD steps twice: on one process with
all the experts, the global batch routed as one micro-batch per shard, their
gradients added up (the reference); and expert-parallel, each process with
its shard of the batch and of the experts. Every step, outputs, losses,
routing statistics and gradients of this process's part must match the
reference's, so must the state routers move without gradients (DeepSeek's
bias, k-means' centroids) once the step finishes, and the bytes the exchange measured must be what
metrics/communication.py computes from the routing. Prints
``rank R: ROUTER ok`` per router; any mismatch raises, and the process fails.
"""

from __future__ import annotations

import copy
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from moebench.config import ModelConfig, MoEConfig  # noqa: E402
from moebench.distributed import (batch_shard, gather_from_ranks, grad_norm, init_from_env,  # noqa: E402
                                  local_shards, mean_over_ranks, sum_over_ranks, sync_gradients,
                                  total_params)
from moebench.metrics.communication import exchange_metrics  # noqa: E402
from moebench.moe.experts import Experts  # noqa: E402
from moebench.moe.expert_parallel import ExchangeMeter, ExpertParallelExperts, shard_experts  # noqa: E402
from moebench.routers import ROUTERS  # noqa: E402
from moebench.routers.base import DataStats, RouterContext  # noqa: E402
from moebench.tasks import Batch  # noqa: E402
from moebench.train import finish_router_steps  # noqa: E402

B, L, D, F, E, VOCAB = 4, 4, 8, 16, 4, 16  # 4 sequences of 4 tokens; 2 per process
STEPS, LR = 3, 0.1
# Randomness drawn per process would differ from one process's draws, so
# top-2 takes its second expert deterministically.
ROUTER_OPTIONS = {"top2": {"second_policy": "all"},
                  "deepseek_moe": {"num_shared": 0}}  # 4 E = 16 routed experts, none shared


class Toy(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.proj, self.block = nn.Linear(D, D), block

    def forward(self, batch: Batch):
        ctx = RouterContext(token_ids_T=batch.token_ids.reshape(-1), batch_shape=tuple(batch.token_ids.shape))
        y, stats = self.block(self.proj(batch.inputs), ctx)
        loss = (y - batch.targets).square().mean() + sum(stats.aux_losses.values())
        return y, loss, stats


def build(router: str) -> Toy:
    entry = ROUTERS.get(router)
    router_cfg = entry.config_cls(name=router, **ROUTER_OPTIONS.get(router, {}))
    model_cfg = ModelConfig(name="toy", d_model=D, d_ff=F, block_size=L)
    moe_cfg = MoEConfig(num_experts=E, capacity_factor=1.0)  # top-1 drops at 1.0
    torch.manual_seed(0)
    toy = Toy(entry.cls.build_layer(router_cfg, model_cfg, moe_cfg, DataStats(vocab_size=VOCAB)))
    if router == "kmeans":  # centroids drawn here, not from tokens: the reference draws its own
        toy.block.router.initialized.fill_(True)
    return toy


def random_batch(generator: torch.Generator) -> Batch:
    return Batch(inputs=torch.randn(B, L, D, generator=generator),
                 targets=torch.randn(B, L, D, generator=generator),
                 token_ids=torch.randint(VOCAB, (B, L), generator=generator))


def rows_per_expert(router: str, stats) -> torch.Tensor:
    """Rows each expert processed for one shard: kept assignments, or Soft MoE's slots."""
    if router == "soft":
        return torch.full((E,), stats.expert_rows // E)
    return stats.kept_E.long()  # deepseek_moe: its 4 E finer experts


def check_router(router: str, rank: int, P: int) -> None:
    reference = build(router)
    model = copy.deepcopy(reference)
    meter = ExchangeMeter()
    assert shard_experts(model, meter=meter) == 1
    assert total_params(model) == sum(p.numel() for p in reference.parameters())
    generator = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        batch = random_batch(generator)
        expected = []
        for p in range(P):  # the reference: each shard a micro-batch, gradients added up
            y_p, loss_p, stats_p = reference(batch_shard(batch, p, P))
            (loss_p / P).backward()
            expected.append((y_p, loss_p, stats_p))
        y_ref, loss_ref, stats_ref = expected[rank]

        (shard,) = local_shards(batch, P)  # under torch.distributed: this process's
        y, loss, stats = model(shard)
        forward_bytes = meter.take()["a2a_bytes_sent"]
        loss.backward()
        backward_bytes = meter.take()["a2a_bytes_sent"]
        sync_gradients(model)
        where = f"{router}, rank {rank}, step {step}"
        assert_close(y, y_ref, rtol=1e-5, atol=1e-6, msg=f"output: {where}")
        assert_close(loss, loss_ref, rtol=1e-5, atol=1e-7, msg=f"loss: {where}")
        global_loss = torch.stack([loss_p for _, loss_p, _ in expected]).mean()
        assert_close(mean_over_ranks(loss), global_loss, msg=f"mean loss: {where}")
        for name in ("routed_E", "kept_E", "experts_per_token_T", "top_expert_T"):
            assert_close(getattr(stats, name), getattr(stats_ref, name), msg=f"{name}: {where}")
        assert stats.dropped == stats_ref.dropped, where
        assert stats.aux_losses.keys() == stats_ref.aux_losses.keys(), where
        for key, value in stats.aux_losses.items():
            assert_close(value, stats_ref.aux_losses[key], msg=f"{key}: {where}")

        ref_params = dict(reference.named_parameters())
        for name, param in model.named_parameters():
            want = ref_params[name].grad
            if ".experts." in name:  # this process's experts: a contiguous share
                local = want.shape[0] // P
                want = want[rank * local:(rank + 1) * local]
            assert_close(param.grad, want, rtol=1e-5, atol=1e-7, msg=f"gradient of {name}: {where}")
        total = nn.utils.get_total_norm([p.grad for p in reference.parameters() if p.grad is not None])
        assert_close(grad_norm(model), total, msg=f"gradient norm: {where}")

        # Measured against computed: every row that leaves its process goes out
        # and comes back, in the forward (dispatch, combine) and the backward
        # (their gradients); the split sizes add P - 1 rows of E / P counts.
        rows_PE = [rows_per_expert(router, s) for _, _, s in expected]
        experts = rows_PE[0].numel()
        counts_bytes = (P - 1) * (experts // P) * 8
        assert backward_bytes == forward_bytes - counts_bytes, where
        measured = sum(f["rows"] for f in gather_from_ranks({"rows": forward_bytes - counts_bytes}))
        row_token_R = torch.cat([torch.full((int(r.sum()),), p * B * L // P) for p, r in enumerate(rows_PE)])
        row_expert_R = torch.cat([torch.repeat_interleave(torch.arange(experts), r) for r in rows_PE])
        computed = exchange_metrics(row_token_R, row_expert_R, B * L, experts, P, row_bytes=D * 4)
        assert measured == computed["comm_bytes_per_token"] * B * L, where

        finish_router_steps(reference, lambda t: t)
        finish_router_steps(model, sum_over_ranks)
        ref_buffers = dict(reference.named_buffers())
        for name, buffer in model.named_buffers():  # replicated state, moved by the whole batch
            assert_close(buffer, ref_buffers[name], msg=f"buffer {name}: {where}")

        with torch.no_grad():
            for net in (reference, model):
                for param in net.parameters():
                    param -= LR * param.grad
                    param.grad = None
    print(f"rank {rank}: {router} ok", flush=True)


def main(routers: list[str]) -> None:
    P = init_from_env(torch.device("cpu"))
    rank = dist.get_rank()
    assert P == 2 and dist.get_backend() == "gloo"
    try:
        ExpertParallelExperts(Experts(3, D, F, "gelu"))
    except ValueError as e:
        assert "3 experts cannot be sharded evenly over 2 processes" in str(e)
    else:
        raise AssertionError("3 experts were sharded over 2 processes")
    for router in routers:
        check_router(router, rank, P)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
