"""Causality probe: does position t of a causal model see the positions after t?

A causal language model's logits at positions <= t must be a function of
tokens <= t of their own sequence. Routers that compare tokens (expert
choice, Soft MoE, BASE's and S-BASE's balanced assignments) and capacities
that rank tokens across positions (dropping by score, or keeping every first
choice before any second one, as every router with k > 1 choices under a
capacity does: top-2, noisy top-k) break this when a routing group spans
whole sequences (moe/grouping.py). The probe measures it instead of trusting
flags: change the tokens after a cut position t of one sequence, and report
how much that sequence's logits at positions <= t move; up to float noise a
causal model gives 0. One sequence at a time, because other sequences may
legitimately matter (capacity filled by earlier sequences) without giving
away this sequence's future.

A capacity leak shows in some sequences and at some cuts only: which tokens
a later first choice evicts depends on the batch and on where the future
starts. So the probe makes 16 probes, spread over up to 16 sequences of the
batch and, in each, over the context (one cut drawn from each equal stratum,
seeded, so every run probes the same places). Measured on the test models
of tests/routers/test_causality.py, top-2 and noisy top-k at capacity
factors 0.75 to 2.0, each on 8 batches of 8 sequences: 61 of these 80 cases
leak at some (sequence, cut) of an exhaustive search; one middle cut in each
of 4 sequences (the probe before) finds 25 of them, 4 sequences x 4 cuts 38
and, for the same 16 passes, 8 sequences x 2 cuts (this probe on a batch of
8) 48.

It runs in evaluation mode (``causal_leak``: what the reported quality rests
on) or in training mode (``causal_leak_train``: what the model learned from;
BASE and S-BASE leak there only), every pass of a mode with the same random
draws (dropout, sampled routes) and the model's buffers (BatchNorm
statistics, balancing biases, centroids) restored after it
(metrics/probe.py), so probing changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moebench.evaluate import EVAL_SEED
from moebench.metrics.probe import probing
from moebench.routers.base import RouterContext
from moebench.tasks import Task


def _logits(model: nn.Module, inputs_BL: Tensor, training: bool) -> Tensor:
    """The model's logits in the given mode, with the same random draws at
    every call and the model left as it was. A model with an adaptive head
    returns no logits: its hidden states, of which each position's output is
    a function, show any leak as well."""
    with probing(model, training, inputs_BL.device):
        # Sequence tasks route by the input token ids themselves.
        ctx = RouterContext(step=-1, token_ids_T=inputs_BL.reshape(-1), batch_shape=tuple(inputs_BL.shape))
        out = model(inputs_BL, ctx)
        return (out.logits if out.head is None else out.hidden).float()


def cut_positions(length: int, cuts: int, generator: torch.Generator) -> list[int]:
    """``cuts`` positions t in 0..length-2 (each leaves a future to replace),
    one drawn uniformly from each of ``cuts`` equal strata of that range, so
    they spread over the context; fewer when the range is shorter."""
    cuts = min(cuts, length - 1)
    edges = [i * (length - 1) // cuts for i in range(cuts + 1)]
    return [lo + int(torch.randint(hi - lo, (), generator=generator)) for lo, hi in zip(edges, edges[1:])]


@torch.no_grad()
def causal_leak(model: nn.Module, inputs_BL: Tensor, training: bool = False, probes: int = 16) -> float:
    """Max |change| of a sequence's logits at positions <= t when its tokens
    after t are replaced (by another sequence's), with the model in
    evaluation mode (or training mode). The first S = min(B, ``probes``)
    sequences of the batch, each in turn, are cut at ``probes`` // S
    positions t (:func:`cut_positions`, seeded by ``EVAL_SEED``): at most
    1 + ``probes`` forward passes.
    """
    B, L = inputs_BL.shape
    if B < 2:
        raise ValueError("causal_leak needs at least two sequences (it swaps in another's future)")
    donor_BL = inputs_BL.roll(1, dims=0)
    sequences = min(B, probes)
    generator = torch.Generator().manual_seed(EVAL_SEED)
    reference_BLV = _logits(model, inputs_BL, training)
    leak = 0.0
    for b in range(sequences):
        for t in cut_positions(L, probes // sequences, generator):
            perturbed_BL = inputs_BL.clone()
            perturbed_BL[b, t + 1 :] = donor_BL[b, t + 1 :]
            perturbed_BLV = _logits(model, perturbed_BL, training)
            change = (perturbed_BLV[b, : t + 1] - reference_BLV[b, : t + 1]).abs().max()
            leak = max(leak, change.item())
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
