"""moebench: a benchmark suite for Mixture-of-Experts routing algorithms.

The Python API (README, "Python API"; moebench/api.py):

    MoE           a router and its MoE layer for one's own model, in one call
    MoEOutput     what an MoE layer returns: y, aux_loss, stats
    run_one       one run, with the command line's overrides; returns its record
    load_results  run records as pandas frames (a Results)
    Results       those frames: runs, curves, loads, ...

Imported on first use: every command-line tool imports this package first,
which then costs 2 ms rather than the API's torch, Hydra and pandas (seconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moebench.api import MoE, MoEOutput, Results, load_results, run_one

__all__ = ["MoE", "MoEOutput", "Results", "load_results", "run_one"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from moebench import api

        return getattr(api, name)
    raise AttributeError(f"module 'moebench' has no attribute {name!r}")
