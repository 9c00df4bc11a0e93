"""What a routing costs in communication under expert parallelism, on P processes.

With the experts sharded over P processes (expert parallelism: GShard,
Lepikhin et al. 2020, section 3; Switch Transformer, Fedus et al. 2021,
section 5.4), every row the experts process travels from the process that
formed it to the process holding its expert through one all-to-all
(dispatch), and its result comes back through a second (combine). A row is a
kept assignment (a token that chooses two experts sends two copies), or a
Soft MoE slot, formed where its group's tokens live. A row whose expert is
on its own process moves no bytes. The process whose experts get the most
rows finishes last and sets the step time of all.

Computed from one layer's routing for P simulated processes, placed as
moebench/moe/expert_parallel.py places them: the batch's tokens split
contiguously over the processes (data-parallel shards), and the experts
contiguously too (process p holds experts p E / P to (p + 1) E / P - 1).
Neither needs to divide evenly: item i of N lives on process floor(i P / N).
"""

from __future__ import annotations

import torch
from torch import Tensor


def contiguous_rank(index_N: Tensor, num_items: int, num_ranks: int) -> Tensor:
    """The process holding each of ``num_items`` items split contiguously and
    as evenly as can be over ``num_ranks`` processes: item i on floor(i P / N)."""
    return torch.div(index_N * num_ranks, num_items, rounding_mode="floor")


def exchange_metrics(
    row_token_R: Tensor,
    row_expert_R: Tensor,
    num_tokens: int,
    num_experts: int,
    num_ranks: int,
    row_bytes: int,
) -> dict[str, float]:
    """The all-to-alls of one layer's routing on ``num_ranks`` processes.

    ``row_token_R``/``row_expert_R``: for each row the experts process, the
    token it starts from (its home process) and its expert; ``row_bytes``: the
    bytes of one row as sent (d_model times the element size of the model's
    dtype). Returns

    - ``comm_bytes_per_token``: bytes sent between processes by the dispatch
      and the combine all-to-all together (every row that leaves its process
      goes out once and comes back once), over the batch's tokens;
    - ``comm_remote_share``: the share of rows that leave their process;
    - ``comm_rank_load_max_over_mean``: rows processed by the busiest
      process's experts over the mean per process (1.0: even; P: all on one).
    """
    home_R = contiguous_rank(row_token_R, num_tokens, num_ranks)
    dest_R = contiguous_rank(row_expert_R, num_experts, num_ranks)
    remote = int((home_R != dest_R).sum())
    rows = row_token_R.numel()
    load_P = torch.bincount(dest_R, minlength=num_ranks).double()
    return {
        "comm_bytes_per_token": 2 * remote * row_bytes / num_tokens,
        "comm_remote_share": remote / rows if rows else 0.0,
        # No rows at all is no imbalance.
        "comm_rank_load_max_over_mean": float(load_P.max() / load_P.mean()) if rows else 1.0,
    }
