"""Speed of every router's FFN layer, judged on ratios, never on absolute times.

Two kinds of test:

* pytest-benchmark benchmarks of each router's layer and of the dense FFN
  (forward + backward). pyproject's ``--benchmark-disable`` runs them once, as
  smoke tests; ``pytest tests/benchmarks --benchmark-enable`` times them.
* the ratio check: layer time over the time of a dense FFN of the same nominal
  active FLOPs (width k * d_ff), both measured in this one test, interleaved
  (so drift in a shared machine hits both alike), on one thread, as medians.
  The ratio must stay under the committed bound in
  ``results/baselines/speed_ratios.json``: ``max_ratio`` for routers listed
  there, ``default_max_ratio`` for the rest, so a new router is checked at once.
  The bounds are about 2x the ratios measured on a 2-core CPU: a check for
  slowdowns by a factor (an accidental Python loop over tokens), not for percents.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import pytest
import torch

from moebench.compose import load_config
from moebench.models.ffn import DenseLayer
from moebench.record import REPO_ROOT
from moebench.commands.regress import slice_routers
from moebench.routers import ROUTERS
from moebench.routers.base import DataStats, RouterContext

BOUNDS = json.loads((REPO_ROOT / "results" / "baselines" / "speed_ratios.json").read_text())
B, L, VOCAB = 8, 64, 256  # 512 tokens in 8 sequences
REPEATS = 21
WARMUP = 5  # first calls fill allocators and caches, and pick kernels


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def layers(router: str) -> tuple[torch.nn.Module, DenseLayer]:
    """The router's FFN layer (tiny model preset) and the dense FFN of its nominal active FLOPs."""
    cfg = load_config(f"router={router}")
    torch.manual_seed(0)
    data = DataStats(vocab_size=VOCAB, token_counts_V=torch.ones(VOCAB))
    layer = ROUTERS.get(router).cls.build_layer(cfg.router, cfg.model, cfg.moe, data)
    m = cfg.model
    return layer, DenseLayer(m.d_model, cfg.router.k * m.d_ff, m.activation)


def step(layer: torch.nn.Module, d_model: int) -> Callable[[], None]:
    """A callable doing one forward and backward pass of ``layer`` on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B * L, d_model, generator=g, requires_grad=True)
    ctx = RouterContext(step=0, token_ids_T=torch.randint(VOCAB, (B * L,), generator=g), batch_shape=(B, L))

    def run() -> None:
        y, _ = layer(x, ctx)
        y.sum().backward()

    return run


@pytest.mark.parametrize("router", slice_routers())
def test_benchmark_layer(benchmark, router):
    layer, dense = layers(router)
    benchmark(step(layer, dense.d_model))


def test_benchmark_dense_ffn(benchmark):
    _, dense = layers("top1")
    benchmark(step(dense, dense.d_model))


def median_ratio(layer: torch.nn.Module, dense: DenseLayer) -> float:
    """Median layer time over median dense FFN time, from interleaved repeats."""
    run_layer, run_dense = step(layer, dense.d_model), step(dense, dense.d_model)
    times: dict[str, list[float]] = {"layer": [], "dense": []}
    for i in range(WARMUP + REPEATS):
        for name, fn in (("layer", run_layer), ("dense", run_dense)):
            started = time.perf_counter()
            fn()
            if i >= WARMUP:
                times[name].append(time.perf_counter() - started)
    return statistics.median(times["layer"]) / statistics.median(times["dense"])


@pytest.mark.parametrize("router", slice_routers())
def test_layer_over_equal_flops_dense_ffn_within_bound(router):
    layer, dense = layers(router)
    bound = BOUNDS["max_ratio"].get(router, BOUNDS["default_max_ratio"])
    ratio = median_ratio(layer, dense)
    assert ratio <= bound, f"{router}: layer takes {ratio:.2f}x the dense FFN's time (bound {bound})"
