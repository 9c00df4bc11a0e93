"""Processes started as torchrun starts its workers, side by side and with a
timeout, so that a hung collective fails a test instead of blocking the suite."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from moebench.distributed import free_port


@pytest.fixture
def torchrun_envs():
    """``torchrun_envs(world_size)``: what torchrun sets for each of its
    workers (moebench.distributed.init_from_env reads it), on a free port."""

    def envs(world_size: int) -> list[dict[str, str]]:
        port = str(free_port())
        return [{"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port} for rank in range(world_size)]

    return envs


@pytest.fixture
def run_side_by_side(tmp_path):
    """``run_side_by_side(commands, timeout_s)``: start every ``(argv, env)``
    at once in ``tmp_path`` (``env`` added to this one's, one thread each) and
    return their outputs in order. The test fails, and every process still
    running is killed, when one fails or the timeout passes."""

    def run(commands: list[tuple[list[str], dict[str, str]]], timeout_s: float) -> list[str]:
        logs = [tmp_path / f"process{i}.log" for i in range(len(commands))]
        processes = []
        for (argv, env), log in zip(commands, logs):
            with log.open("w") as out:
                processes.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                                  env={**os.environ, "OMP_NUM_THREADS": "1", **env}))
        deadline = time.monotonic() + timeout_s
        try:
            for process in processes:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"no result after {timeout_s} s (a collective hung?):\n"
                        + "\n".join(log.read_text()[-2000:] for log in logs))
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        outputs = [log.read_text() for log in logs]
        for process, output in zip(processes, outputs):
            assert process.returncode == 0, output[-8000:]
        return outputs

    return run
