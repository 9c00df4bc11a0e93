"""The Triton expert FFN against the PyTorch path, and that against float64.

Outputs and every gradient (x, w_in, w_out, combine weight), on the loads
that break grouped kernels: uneven, empty experts, one expert for all,
dropped assignments, a variable number of experts per token, Soft MoE slots.
"""

import pytest
import torch

from moebench.errors import ConfigError
from moebench.kernels import expert_ffn_triton
from moebench.moe.dispatch import sort_by_expert
from moebench.moe.experts import Experts, activate, expert_ffn_torch, resolve_impl

# Widths that are no multiple of the kernels' blocks exercise their masks.
T, D, F, E = 96, 64, 48, 8
KINDS = ["top2", "uneven", "one_expert", "dropped", "all_dropped", "expert_choice", "soft_slots"]


def assignments(kind: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(token_A, expert_A, capacity) for each kind of load."""
    if kind == "expert_choice":  # each expert picks 20 tokens: 0 to E experts per token
        token_EC = torch.rand(E, T, generator=gen).topk(20, dim=-1).indices
        return token_EC.reshape(-1), torch.arange(E).repeat_interleave(20), None
    if kind == "one_expert":
        return torch.arange(T), torch.full((T,), 3), None
    token_A = torch.arange(T).repeat(2)
    if kind == "uneven":  # skewed, experts 2 and 5 empty
        probs_E = torch.arange(1.0, E + 1) ** 3
        probs_E[[2, 5]] = 0
        return token_A, torch.multinomial(probs_E, 2 * T, replacement=True, generator=gen), None
    expert_A = torch.randint(0, E, (2 * T,), generator=gen)
    return token_A, expert_A, {"dropped": 12, "all_dropped": 0}.get(kind)


def make_inputs(kind: str, activation: str, device: str, seed: int = 0) -> list:
    """x_TD, w_in_EDH, w_out_EFD, token_idx_R, counts_E, weight_R, activation."""
    gen = torch.Generator().manual_seed(seed)
    H = 2 * F if activation == "swiglu" else F
    num_tokens = T
    if kind == "soft_slots":  # Soft MoE: 12 slots per expert, already grouped
        num_tokens = 12 * E
        token_R, counts_E, weight_R = (
            torch.arange(num_tokens),
            torch.full((E,), 12),
            torch.ones(num_tokens),
        )
    else:
        token_A, expert_A, capacity = assignments(kind, gen)
        perm = sort_by_expert(expert_A, torch.arange(token_A.numel()), E, capacity)
        token_R, counts_E = token_A[perm.order_A], perm.counts_E
        weight_R = torch.rand(token_R.numel(), generator=gen)
        # Rows past the kept ones must be ignored: give them weights that would show.
        weight_R[int(counts_E.sum()) :] = float("nan")
    x_TD = torch.randn(num_tokens, D, generator=gen)
    w_in_EDH = torch.randn(E, D, H, generator=gen) / D**0.5
    w_out_EFD = torch.randn(E, F, D, generator=gen) / F**0.5
    leaves = [t.to(device).requires_grad_() for t in (x_TD, w_in_EDH, w_out_EFD)]
    return [
        *leaves,
        token_R.to(device),
        counts_E.to(device),
        weight_R.to(device).requires_grad_(),
        activation,
    ]


def run(ffn, inputs: list, seed: int = 1) -> list[torch.Tensor]:
    """[y, dx, dw_in, dw_out, dweight] for a random upstream gradient."""
    y_TD = ffn(*inputs)
    dy_TD = torch.randn(y_TD.shape, generator=torch.Generator().manual_seed(seed)).to(y_TD)
    x_TD, w_in_EDH, w_out_EFD, _, _, weight_R, _ = inputs
    return [y_TD, *torch.autograd.grad(y_TD, [x_TD, w_in_EDH, w_out_EFD, weight_R], dy_TD)]


def expert_ffn_rowwise(x_TD, w_in_EDH, w_out_EFD, token_idx_R, counts_E, weight_R, activation):
    """The contract row by row, with no grouping: what both grouped paths must compute."""
    kept = int(counts_E.sum())
    token_R, weight_R = token_idx_R[:kept], weight_R[:kept]
    expert_R = torch.repeat_interleave(torch.arange(E, device=counts_E.device), counts_E)
    h_RH = torch.einsum("rd,rdh->rh", x_TD[token_R], w_in_EDH[expert_R])
    out_RD = torch.einsum("rf,rfd->rd", activate(h_RH, activation), w_out_EFD[expert_R])
    return torch.zeros_like(x_TD).index_add(0, token_R, out_RD * weight_R[:, None])


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("kind", KINDS)
def test_triton_matches_torch(kind, activation, device, poisoned):
    inputs = make_inputs(kind, activation, device)
    for got, want in zip(run(expert_ffn_triton, inputs), run(expert_ffn_torch, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("kind", KINDS)
def test_torch_matches_float64(kind, activation, device, poisoned):
    inputs = make_inputs(kind, activation, device)
    inputs64 = [
        t.detach().double().requires_grad_() if t.is_floating_point() else t for t in inputs[:-1]
    ]
    for got, want in zip(
        run(expert_ffn_torch, inputs), run(expert_ffn_rowwise, [*inputs64, activation])
    ):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)


def test_triton_is_deterministic(device):
    inputs = make_inputs("expert_choice", "swiglu", device)
    for first, second in zip(run(expert_ffn_triton, inputs), run(expert_ffn_triton, inputs)):
        assert torch.equal(first, second)


def test_experts_module_runs_the_chosen_impl(device):
    torch.manual_seed(0)
    experts = Experts(E, D, F, "swiglu", impl="triton").to(device)
    _, _, _, token_R, counts_E, weight_R, _ = make_inputs("top2", "swiglu", device)
    x_TD = torch.randn(T, D, device=device)
    y_triton = experts(x_TD, token_R, counts_E, weight_R)
    experts.impl = "torch"
    torch.testing.assert_close(
        y_triton, experts(x_TD, token_R, counts_E, weight_R), rtol=1e-4, atol=1e-5
    )


def test_impl_selection(monkeypatch):
    assert resolve_impl("auto", torch.device("cpu")) == "torch"
    assert resolve_impl("auto", torch.device("cuda")) == "triton"
    with pytest.raises(ConfigError, match="moe.impl='fast'"):
        Experts(E, D, F, "gelu", impl="fast")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="triton needs CUDA"):
        resolve_impl("triton", torch.device("cpu"))
