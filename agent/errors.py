"""Typed errors of the edge agent."""

from __future__ import annotations

from collections.abc import Sequence


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is missing or invalid; ``problems`` lists each one with its key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid configuration")


class JournalError(AgentError):
    """The SQLite journal cannot be opened or is inconsistent."""


class DeliveryError(AgentError):
    """A destination did not acknowledge an object.

    ``permanent`` errors concern the object itself (the destination will never accept it)
    and quarantine that delivery; ``auth`` errors (401/403) pause the destination; every
    other error is transient and retried with backoff, forever. ``detail`` is the peer's
    own reason (an error text, a failure reason, a status comment): it is kept in the
    local journal for ``agent quarantine show``, never sent to the central.
    """

    def __init__(self, message: str, *, permanent: bool = False, auth: bool = False,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.auth = auth
        self.detail = detail

    @property
    def reason(self) -> str:
        """The message with the peer's own words, for the local journal."""
        return f"{self}: {self.detail}" if self.detail else str(self)
