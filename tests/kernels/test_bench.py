"""pytest-benchmark timings of moebench.commands.bench's methods on a small layer.

    pytest tests/kernels/test_bench.py --benchmark-enable

The normal run passes --benchmark-disable: each body then runs once, a smoke
test of the benchmark's methods that still checks the answer it would time
against float64. The sparse MoE methods are checked against the textbook
dense MoE with the softmax masked to the top k, a route that shares none of
their grouping code.
"""

import copy
import dataclasses

import pytest
import torch

from moebench.commands.bench import Problem, Shape, dense_softmax_moe, methods

SHAPE = Shape(tokens=256, d_model=64, d_ff=96, experts=8, k=2, dtype="float32")
SPARSE = ["moe-torch", "moe-grouped_mm", "moe-triton", "scattermoe"]
NAMES = [*SPARSE, "dense-softmax-moe", "dense-ffn", "dense-matmul"]


@pytest.fixture(scope="module")
def problem() -> Problem:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    p = Problem.random(SHAPE, device, seed=0)
    for leaf in p.leaves():
        leaf.requires_grad_()
    return p


def method(name: str, p: Problem):
    run = methods(p.x_TD.device, p.x_TD.dtype)[name]
    if isinstance(run, str):
        pytest.skip(run)
    return run


def in_float64(p: Problem) -> Problem:
    leaves = {
        f.name: getattr(p, f.name).detach().double().requires_grad_()
        for f in dataclasses.fields(p)
        if isinstance(getattr(p, f.name), torch.Tensor) and getattr(p, f.name).is_floating_point()
    }
    return dataclasses.replace(p, **leaves, ffn=copy.deepcopy(p.ffn).double())


def expected(name: str, p: Problem):
    """Output and leaf gradients of what ``name`` computes, in float64."""
    p64 = in_float64(p)
    if name in SPARSE:
        topk_probs_TK, experts_TK = p64.probs_TE.topk(SHAPE.k, dim=-1)
        masked = torch.zeros_like(p64.probs_TE).scatter(1, experts_TK, topk_probs_TK)
        y_TD = dense_softmax_moe(dataclasses.replace(p64, probs_TE=masked))
    else:
        y_TD = methods(p.x_TD.device, p.x_TD.dtype)[name](p64)
    return y_TD, grads(y_TD, p64)


def grads(y_TD: torch.Tensor, p: Problem) -> list[torch.Tensor | None]:
    return torch.autograd.grad(y_TD, p.leaves(), torch.ones_like(y_TD), allow_unused=True)


@pytest.mark.parametrize("name", NAMES)
def test_forward(benchmark, problem, name):
    run = method(name, problem)

    def forward():
        with torch.no_grad():
            return run(problem)

    want, _ = expected(name, problem)
    torch.testing.assert_close(benchmark(forward), want.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(benchmark, problem, name):
    run = method(name, problem)
    _, want = expected(name, problem)
    for got, w in zip(benchmark(lambda: grads(run(problem), problem)), want):
        assert (got is None) == (w is None)
        if got is not None:
            torch.testing.assert_close(got, w.float(), rtol=1e-4, atol=1e-4)
