"""Errors of the central service (a small typed hierarchy)."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of every central-service error."""


class ConfigError(ServiceError):
    """The configuration is invalid; ``problems`` lists each one with its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class NotInitializedError(ServiceError):
    """The data directory or database has not been set up by ``central init``."""


class AlreadyInitializedError(ServiceError):
    """``central init`` ran on a data directory that already holds a configuration."""


class ObjectRejected(ServiceError):
    """An uploaded object failed verification (hash mismatch or too large)."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)
