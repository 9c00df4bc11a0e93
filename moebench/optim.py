"""Lazy Adam for tables with sparse gradients, and several optimizers as one.

PEER's expert tables (moe/peer.py) hold up to N = 10^6 rows, of which a step
retrieves at most T H K (131,072 at T = 1,024, H = 8, K = 16); their
gradients are sparse tensors of those rows.
AdamW would read and write all N rows every step (moments, decay, update),
which at N = 10^6 costs more than the whole layer. Lazy Adam (as
``torch.optim.SparseAdam``, TensorFlow Addons' ``LazyAdam``) updates the
moments and the parameter only on the rows present in the gradient: a row
not retrieved keeps its value and its moments.

Why not ``torch.optim.SparseAdam``: it coalesces the gradient again and goes
through sparse-tensor arithmetic for every moment. One step on one [N, 128]
table with 131,072 retrievals (one thread, a shared 2-core machine):
N = 65,536: SparseAdam 126 ms, this class 59 ms, dense AdamW 46 ms;
N = 1,048,576: 364 ms, 165 ms, 1,723 ms. This class works on the rows with
dense ``index_select`` / ``index_copy_`` / ``index_add_``; its cost grows with
the distinct rows retrieved, not with N.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def coalesced(grad: Tensor) -> Tensor:
    """``grad.coalesce()``, without its sort when the rows are already strictly
    increasing: moe/peer.py's row_gradient makes them so, but autograd, when
    it stores a sparse gradient in ``.grad``, drops the coalesced flag."""
    if grad.is_coalesced():
        return grad
    rows_R = grad._indices()[0]
    if bool((rows_R[1:] > rows_R[:-1]).all()):
        return torch.sparse_coo_tensor(grad._indices(), grad._values(), grad.shape,
                                       is_coalesced=True, check_invariants=False)
    return grad.coalesce()


class LazyAdam(torch.optim.Optimizer):
    """Adam on the rows of a sparse (COO, rows x D) gradient, without weight decay.

    A row present in the gradient gets exactly AdamW's update with
    ``weight_decay=0`` (same moments, bias correction by the step count, eps
    added after the bias-corrected square root); rows absent keep parameter and
    moments, so a row retrieved every step follows Adam exactly and one
    retrieved rarely sees bias corrections of the global step (as SparseAdam).
    No weight decay: decaying all N rows every step is the dense cost this
    class avoids, and decaying only the retrieved rows would make the decay
    depend on how often a row is retrieved.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        assert closure is None, "LazyAdam takes no closure"
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise TypeError("LazyAdam needs sparse gradients (rows x D)")
                grad = coalesced(p.grad)
                rows_U, grad_UD = grad.indices()[0], grad.values()
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                exp_avg_UD = state["exp_avg"].index_select(0, rows_U).lerp_(grad_UD, 1 - beta1)
                exp_avg_sq_UD = state["exp_avg_sq"].index_select(0, rows_U).mul_(beta2)
                exp_avg_sq_UD.addcmul_(grad_UD, grad_UD, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows_U, exp_avg_UD)
                state["exp_avg_sq"].index_copy_(0, rows_U, exp_avg_sq_UD)
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2_sqrt = (1 - beta2 ** state["step"]) ** 0.5
                denom_UD = exp_avg_sq_UD.sqrt_().div_(bias_correction2_sqrt).add_(eps)
                p.index_add_(0, rows_U, exp_avg_UD.div_(denom_UD), alpha=-lr / bias_correction1)


class Optimizers:
    """Several optimizers stepped as one: the training loop sets the learning
    rate through ``param_groups`` (all of theirs) and calls ``zero_grad`` and
    ``step``."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()
