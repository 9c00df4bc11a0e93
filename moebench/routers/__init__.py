"""Routers: one family per module, each registered by name.

The shape-suffix legend is in :mod:`moebench.routers.base`.
"""

from moebench.registry import Registry
from moebench.routers.base import Router

ROUTERS: Registry[Router] = Registry("router", __name__)

__all__ = ["ROUTERS", "Router"]
