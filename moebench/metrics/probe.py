"""Forward passes that measure a model without changing it.

The causality probe (metrics/causality.py) and the FLOPs budget (train.py)
run the model in training mode outside training. A training-mode forward is
not read-only: loss-free balancing moves its biases, k-means its centroids,
PEER's BatchNorm its running statistics, and dropout and sampled routes
(top-2's random second expert, REINFORCE's sampling, noisy top-k's noise)
draw from the global random generator, which training then draws from too.
:func:`probing` undoes all of that, so a run with a probe trains exactly as
it would without one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from moebench.evaluate import EVAL_SEED


@contextmanager
def probing(model: nn.Module, training: bool, device: torch.device) -> Iterator[None]:
    """Forward passes in the given mode, without gradient, with the same random
    draws at every entry (seeded by ``EVAL_SEED``); on exit the caller's random
    state, the model's buffers and its mode are as they were before."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(EVAL_SEED)
            model.train(training)
            yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
