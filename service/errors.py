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


class ObjectStoreUnavailable(ServiceError):
    """The object store (an S3 endpoint, a disk) cannot be reached right now: retry later.

    The message names the failure class only, never a credential or a request signature.
    """


class ObjectCorrupt(ServiceError):
    """A stored object's bytes no longer hash to its name (bit rot, tampering, truncation)."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256
        super().__init__(f"stored object {sha256[:12]}… failed its SHA-256 check")
