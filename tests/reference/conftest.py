"""Helpers for the differential tests against published reference packages.

The two top-2 references draw their random-routing uniforms differently from
moebench (``Tensor.uniform_`` on a ``[2, B, T]`` or ``[B, T]`` tensor, where
moebench draws ``torch.rand(T)``), so seeding the RNG alike does not give them
the same numbers. :func:`same_uniforms` makes every uniform draw inside its
``with`` block return the same per-token values ``u_T``, whichever function
draws them, so both sides decide on the same noise.
"""

from __future__ import annotations

import contextlib

import pytest
import torch


def _per_token(u_T: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``u_T`` laid along the token dimension of ``shape`` (its last or first
    dimension of size T), repeated along the others."""
    T = u_T.numel()
    if len(shape) >= 1 and shape[-1] == T:
        return u_T.expand(shape).clone()
    if len(shape) >= 1 and shape[0] == T:
        return u_T.view(T, *[1] * (len(shape) - 1)).expand(shape).clone()
    raise AssertionError(f"a uniform draw of shape {tuple(shape)} has no token dimension of size {T}")


@pytest.fixture
def same_uniforms(monkeypatch):
    """``with same_uniforms(u_T): ...``: every ``torch.rand``, ``torch.rand_like``
    and ``Tensor.uniform_`` in the block yields ``u_T`` per token."""

    @contextlib.contextmanager
    def use(u_T: torch.Tensor):
        def rand(*size, dtype=None, device=None, **_):
            if len(size) == 1 and not isinstance(size[0], int):
                size = tuple(size[0])
            return _per_token(u_T, torch.Size(size)).to(dtype=dtype or torch.float32, device=device)

        def rand_like(t, dtype=None, device=None, **_):
            return _per_token(u_T, t.shape).to(dtype=dtype or t.dtype, device=device or t.device)

        def uniform_(self, a=0.0, b=1.0, **_):
            with torch.no_grad():
                return self.copy_(a + (b - a) * _per_token(u_T, self.shape))

        with monkeypatch.context() as patch:
            patch.setattr(torch, "rand", rand)
            patch.setattr(torch, "rand_like", rand_like)
            patch.setattr(torch.Tensor, "uniform_", uniform_)
            yield

    return use
