"""Errors of the reading gateway (a small typed hierarchy)."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every gateway error."""


class ConfigError(GatewayError):
    """The configuration is invalid; ``problems`` lists each one with its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class NotInitializedError(GatewayError):
    """The data directory or database has not been set up by ``gateway init``."""


class AlreadyInitializedError(GatewayError):
    """``gateway init`` ran on a data directory that already holds a configuration."""


class UpstreamError(GatewayError):
    """The upstream archive failed; ``status`` is what the gateway answers (502 or 504)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class UpstreamNotFound(GatewayError):
    """The upstream archive has no such study, series or instance."""


class RefusedInstance(GatewayError):
    """A protected instance that does not restore (tampered, wrong key, damaged).

    Refused for that instance only; never served as noise.
    """

    def __init__(self, sop_instance_uid: str, reason: str, study_uid: str = "",
                 series_uid: str = "") -> None:  # fmt: skip
        self.sop_instance_uid = sop_instance_uid
        self.reason = reason
        self.study_uid = study_uid  # as the archive labels it, when known
        self.series_uid = series_uid
        super().__init__(f"instance {sop_instance_uid} refused: {reason}")


class AuditChainError(GatewayError):
    """The audit chain does not verify (an entry was edited, removed or inserted)."""
