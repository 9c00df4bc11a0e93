"""What every command does with bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import sys

from moebench.errors import ConfigError

EXIT_BAD_INPUT = 2


def fail(message: str) -> None:
    """Print ``moebench: error: <message>`` and exit 2."""
    print(f"moebench: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def names_option(option: str, text: str | None, allowed: list[str]) -> list[str]:
    """A comma-separated ``--option`` of names, each one of ``allowed`` (all
    of them when not given); a name not allowed fails in one line."""
    if text is None:
        return allowed
    names = text.split(",")
    for name in names:
        if name not in allowed:
            fail(str(ConfigError(option, name, allowed)))
    return names
