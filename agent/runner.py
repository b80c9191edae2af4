"""The agent's main loop, shared by ``scanfort agent run`` and the OS-service host."""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.config import AgentConfig


def run(
    config: AgentConfig,
    stop: threading.Event,
    on_ready: Callable[[], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Run the agent until ``stop`` is set.

    ``on_ready`` is called once when every folder is watched; ``on_tick`` at least every
    few seconds while the agent is healthy (systemd watchdog). On stop, in-flight work is
    finished or parked in the journal, from where the next start resumes it.
    """
    raise NotImplementedError
