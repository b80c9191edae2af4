"""Errors of the OS-service host."""

from __future__ import annotations

from agent.errors import AgentError


class ServiceError(AgentError):
    """Installing or controlling the OS service failed; ``hint`` says what to try."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
