"""Causality probe: does position t of a causal model see the positions after t?

A causal language model's logits at positions <= t must be a function of
tokens <= t of their own sequence. Routers that compare tokens (expert
choice, Soft MoE, BASE's and S-BASE's balanced assignments) and capacities
that rank tokens across positions break this when a routing group spans
whole sequences (moe/grouping.py). The probe measures it instead of trusting
flags: change the tokens after position t of one sequence, and report how
much that sequence's logits at positions <= t move; up to float noise a
causal model gives 0. One sequence at a time, because other sequences may
legitimately matter (capacity filled by earlier sequences) without giving
away this sequence's future. It runs in evaluation mode (``causal_leak``:
what the reported quality rests on) or in training mode
(``causal_leak_train``: what the model learned from; BASE and S-BASE leak
there only), both passes of a mode with the same random draws (dropout,
sampled routes) and the model's buffers (BatchNorm statistics, balancing
biases, centroids) restored after every pass, so probing changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moebench.evaluate import EVAL_SEED
from moebench.routers.base import RouterContext
from moebench.tasks import Task


def _logits(model: nn.Module, inputs_BL: Tensor) -> Tensor:
    """The model's logits, with the same random draws at every call and its
    buffers as they were before the call."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    devices = [inputs_BL.device] if inputs_BL.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(EVAL_SEED)
            # Sequence tasks route by the input token ids themselves.
            ctx = RouterContext(step=-1, token_ids_T=inputs_BL.reshape(-1),
                                batch_shape=tuple(inputs_BL.shape))
            return model(inputs_BL, ctx).logits.float()
    finally:
        for name, b in model.named_buffers():
            b.copy_(buffers[name])


@torch.no_grad()
def causal_leak(model: nn.Module, inputs_BL: Tensor, training: bool = False,
                t: int | None = None, sequences: int = 4) -> float:
    """Max |change| of a sequence's logits at positions <= t when its tokens
    after t are replaced (by another sequence's), over the first ``sequences``
    sequences of the batch, each in turn, with the model in evaluation mode
    (or training mode).

    ``t`` defaults to the middle position.
    """
    B, L = inputs_BL.shape
    if B < 2:
        raise ValueError("causal_leak needs at least two sequences (it swaps in another's future)")
    t = L // 2 - 1 if t is None else t
    donor_BL = inputs_BL.roll(1, dims=0)
    was_training = model.training
    leak = 0.0
    try:
        model.train(training)
        reference_BLV = _logits(model, inputs_BL)
        for b in range(min(B, sequences)):
            perturbed_BL = inputs_BL.clone()
            perturbed_BL[b, t + 1 :] = donor_BL[b, t + 1 :]
            perturbed_BLV = _logits(model, perturbed_BL)
            change = (perturbed_BLV[b, : t + 1] - reference_BLV[b, : t + 1]).abs().max()
            leak = max(leak, change.item())
    finally:
        model.train(was_training)
    return leak


def task_causal_leak(model: nn.Module, task: Task, batch_size: int) -> dict[str, float | None]:
    """``causal_leak`` (evaluation mode) and ``causal_leak_train`` on one
    evaluation batch of a causal task; None where they do not apply
    (per-token tasks, bidirectional models)."""
    if not task.causal:
        return {"causal_leak": None, "causal_leak_train": None}
    generator = torch.Generator().manual_seed(EVAL_SEED)
    inputs_BL = task.get_batch(task.eval_splits[0], batch_size, generator).inputs
    inputs_BL = inputs_BL.to(next(model.parameters()).device)
    return {"causal_leak": causal_leak(model, inputs_BL),
            "causal_leak_train": causal_leak(model, inputs_BL, training=True)}
