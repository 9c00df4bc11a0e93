"""Stopping a run with Ctrl-C or SIGTERM without losing it.

Ctrl-C raises KeyboardInterrupt; within :func:`sigterm_raises`, SIGTERM
(Slurm's time limit or preemption, ``docker stop``, ``kill``) raises
:class:`Terminated`, a KeyboardInterrupt, so one ``except KeyboardInterrupt``
handles both. Training stops at once; the final evaluation and the writing of
the record then run with both signals held (:func:`held_signals`): the
evaluation takes seconds, and a record cut short is a run lost. A process
stopped by a signal exits 128 + its number: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C's KeyboardInterrupt is."""


def signal_name(stop: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"


def interruption(name: str) -> KeyboardInterrupt:
    return Terminated() if name == "SIGTERM" else KeyboardInterrupt()


def _raise(signum: int, frame: object) -> None:
    raise interruption(signal.Signals(signum).name)


@contextmanager
def _handling(handlers: dict[int, Callable]) -> Iterator[None]:
    # Python sets handlers in the main thread only; signals reach only it anyway.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within: SIGTERM raises :class:`Terminated` instead of killing the process."""
    with _handling({signal.SIGTERM: _raise}):
        yield


@contextmanager
def held_signals() -> Iterator[list[str]]:
    """Within: Ctrl-C and SIGTERM are held, not raised, so the work inside (an
    evaluation, the writing of a record) finishes; yields the names of the
    signals held, for the caller to act on. A second one while one is held
    raises at once: whoever insists gets out, without that work."""
    held: list[str] = []

    def hold(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if held:
            raise interruption(name)
        held.append(name)
        log.warning("%s: finishing the evaluation and the record first; "
                    "send it again to quit without them", name)

    with _handling({signal.SIGINT: hold, signal.SIGTERM: hold}):
        yield held


def exit_stopped(name: str) -> NoReturn:
    """Exit as a process stopped by signal ``name`` does: 128 + its number."""
    print(f"moebench: stopped by {name}", file=sys.stderr)
    raise SystemExit(128 + signal.Signals[name])
