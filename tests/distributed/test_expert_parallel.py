"""Expert parallelism: 2 gloo processes train as one process routing the same shards.

The multi-process check starts two processes of tests/distributed/ep_worker.py
as torchrun would, with a timeout (tests/distributed/conftest.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from moebench.distributed import backend_for, batch_shard, local_shards
from moebench.moe.expert_parallel import ExchangeMeter, by_local_expert
from moebench.tasks import Batch

WORKER = Path(__file__).with_name("ep_worker.py")
ROUTERS = ("top1", "top2", "expert_choice", "hash", "soft", "deepseek_moe", "kmeans")
TIMEOUT_S = 60  # about 20 s on a busy 2-core machine


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_processes_match_one_process_routing_the_same_shards(run_side_by_side, torchrun_envs):
    commands = [([sys.executable, str(WORKER), *ROUTERS], env) for env in torchrun_envs(2)]
    for rank, output in enumerate(run_side_by_side(commands, TIMEOUT_S)):
        for router in ROUTERS:
            assert f"rank {rank}: {router} ok" in output


def test_received_rows_regrouped_by_local_expert():
    # From process 0: 2 rows for local expert 0, 1 for expert 1; from process 1: 1 and 2.
    received_PL = torch.tensor([[2, 1], [1, 2]])
    # Arrival order: rows 0-1 (p0, e0), 2 (p0, e1), 3 (p1, e0), 4-5 (p1, e1).
    assert by_local_expert(received_PL).tolist() == [0, 1, 3, 2, 4, 5]


def test_meter_sums_until_read():
    meter = ExchangeMeter()
    meter.add(100, 0.5)
    meter.add(28, 0.25)
    assert meter.take() == {"a2a_bytes_sent": 128.0, "a2a_seconds": 0.75}
    assert meter.take() == {"a2a_bytes_sent": 0.0, "a2a_seconds": 0.0}


def test_batch_shard_takes_contiguous_examples_of_every_field():
    batch = Batch(inputs=torch.arange(8).view(4, 2), targets=torch.arange(8).view(4, 2) + 100,
                  token_ids=torch.arange(4))
    shard = batch_shard(batch, 1, 2)
    assert shard.inputs.tolist() == [[4, 5], [6, 7]]
    assert shard.targets.tolist() == [[104, 105], [106, 107]]
    assert shard.token_ids.tolist() == [2, 3]
    assert shard.cluster_ids is None and shard.loss_mask is None
    with pytest.raises(ValueError, match="4 examples cannot be split into 3 equal shards"):
        batch_shard(batch, 0, 3)


def test_one_process_trains_on_every_shard_in_turn():
    batch = Batch(inputs=torch.arange(4), targets=torch.arange(4))
    assert local_shards(batch, 1) == [batch]
    assert [shard.inputs.tolist() for shard in local_shards(batch, 2)] == [[0, 1], [2, 3]]


def test_backend_by_device():
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda")) == "nccl"
