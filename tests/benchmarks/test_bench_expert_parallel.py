"""moebench.commands.bench_expert_parallel: the record of a toy smoke run, and bad options.

The smoke run spawns 2 gloo processes, so it runs in a subprocess with a
timeout: a hung exchange fails the test instead of blocking the suite. No
timing is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from moebench.commands.bench_expert_parallel import main, markdown

SMOKE = ["--routers", "top1,soft", "--repeats", "2", "--warmup", "0", "--batch-tokens", "256"]
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "expert_parallel.json"
    command = [sys.executable, "-m", "moebench.commands.bench_expert_parallel", *SMOKE, "--out", str(out)]
    # A session of its own: on a timeout the benchmark and the processes it spawned end together.
    bench = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        output, _ = bench.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        output, _ = bench.communicate()
        pytest.fail(f"no result after {TIMEOUT_S} s:\n{output[-4000:]}")
    assert bench.returncode == 0, output[-8000:]
    assert f"wrote {out}" in output
    return json.loads(out.read_text())


def test_record_has_both_setups_for_every_router(record):
    assert record["device_type"] == "cpu" and record["cpu_threads"] == 1
    assert record["arguments"]["processes"] == 2 and record["arguments"]["batch_tokens"] == 256
    assert [e["router"] for e in record["results"]] == ["top1", "soft"]
    for e in record["results"]:
        one, ep = e["one_process"], e["expert_parallel"]
        assert len(one["step_s_each"]) == len(ep["step_s_each"]) == 2
        assert ep["processes"] == len(ep["per_rank"]) == 2
        assert e["step_s_vs_one_process"] == ep["step_s_median"] / one["step_s_median"]
        for rank in ep["per_rank"]:
            # the exchange is part of the step; the step is the slowest process's
            assert 0 < rank["a2a_s_median"] and 0 < rank["a2a_share_median"] < 1
            assert rank["step_s_median"] <= max(ep["step_s_each"])
        assert 0 < ep["a2a_share_median"] < 1


def test_soft_moe_sends_its_slots(record):
    # 2 sequences of 128 tokens, one per process; 8 experts of 16 slots each for
    # a sequence (S = 128 / 8). Each process sends its 4 * 16 slots for the
    # other's experts and returns the other's 4 * 16 results, in the forward
    # and again in the backward (their gradients), plus its 4 split sizes
    # (int64) once; float32 rows of 128.
    soft = record["results"][1]["expert_parallel"]
    want = 4 * (4 * 16) * 128 * 4 + 4 * 8
    assert [r["a2a_bytes_sent_per_step"] for r in soft["per_rank"]] == [want, want]


def test_markdown_has_a_row_per_router(record):
    rows = [line for line in markdown(record).splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0] for row in rows] == ["| top1", "| soft"]


@pytest.mark.parametrize("option, value, message", [
    ("--processes", "3", "--processes=3 is not valid; allowed: a divisor of the 8 experts"),
    ("--processes", "1", "--processes=1 is not valid; allowed: an integer >= 2"),
    ("--batch-tokens", "128", "--batch-tokens=128 is not valid; allowed: a multiple of 128 tokens"),
    ("--repeats", "0", "--repeats=0 is not valid; allowed: an integer >= 1"),
    ("--routers", "top1,peer", "--routers='peer' is not valid; allowed: top1, top2, expert_choice"),
])
def test_bad_option_is_one_line_and_exit_2(capsys, tmp_path, option, value, message):
    with pytest.raises(SystemExit) as stop:
        main([option, value, "--out", str(tmp_path / "x.json")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"moebench: error: {message}") and "\n" not in err
    assert not (tmp_path / "x.json").exists()
