"""Name -> implementation registries for routers and tasks.

Registering a class also stores its config dataclass in Hydra's ConfigStore
under ``schema/<group>/<name>``; the YAML file ``conf/<group>/<name>.yaml``
extends that schema, so a wrong type or an unknown key fails at start-up.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from hydra.core.config_store import ConfigStore

from moebench.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    cls: type[T]
    config_cls: type


class Registry(Generic[T]):
    """Entries of one config group, found by importing every module of ``package``.

    Discovery is lazy (on first lookup) so that the modules it imports may
    themselves import the rest of moebench without an import cycle. This is
    why adding a router (or a task) means adding one file: nothing else lists it.
    """

    def __init__(self, group: str, package: str) -> None:
        self.group, self.package = group, package
        self._entries: dict[str, Entry[T]] = {}
        self._discovered = False

    def register(self, name: str, config_cls: type) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.group} {name!r} is registered twice")
            self._entries[name] = Entry(name, cls, config_cls)
            ConfigStore.instance().store(group=f"schema/{self.group}", name=name, node=config_cls)
            return cls

        return decorate

    def get(self, name: str) -> Entry[T]:
        self.discover()
        if name not in self._entries:
            raise ConfigError(f"{self.group}.name", name, self.names())
        return self._entries[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def discover(self) -> None:
        """Import every module of the package so their ``register`` calls run."""
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self.package}.{info.name}")
