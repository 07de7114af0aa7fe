"""User-facing errors.

Everything a user can get wrong (an unknown data set, a bad config key, a missing file, a
corrupt download) raises a :class:`PrealignError` whose message names the problem *and* the
fix. The CLI prints it as one line and exits with status 2, never with a traceback.
"""
from __future__ import annotations

from collections.abc import Iterable


class PrealignError(Exception):
    """A problem the user can fix; ``str(err)`` says what and how."""


class UnknownNameError(PrealignError, ValueError):
    """A name looked up in a registry (rule, method, data set, experiment, ...) does not exist."""

    def __init__(self, kind: str, name: object, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}")


class ConfigError(PrealignError, ValueError):
    """A configuration value or key is invalid."""


class PrealignWarning(UserWarning):
    """Something the user should know that changes no result (e.g. a stored run that is not reused
    and why); the CLI prints it as one line ``prealign: warning: ...``."""
