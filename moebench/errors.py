"""The one error type for bad user input: it names key, value and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    def __init__(self, key: str, value: object, allowed: str | Iterable[object]) -> None:
        if not isinstance(allowed, str):
            allowed = ", ".join(str(a) for a in allowed)
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not valid; allowed: {allowed}")


class DataError(RuntimeError):
    """A data file is missing or is not the expected one; the message names the
    path, the expected sha256 and where to obtain the file."""
