"""Running the agent as an OS service: systemd (notify, watchdog, generated unit) and a
Windows service (pywin32), plus ``scanfort service install|uninstall|start|stop|status``.

Modules: :mod:`~agent.oshost.notify` (sd_notify protocol), :mod:`~agent.oshost.host`
(the loop under a service manager), :mod:`~agent.oshost.unit` (unit text),
:mod:`~agent.oshost.linux` / :mod:`~agent.oshost.windows` (install plans),
:mod:`~agent.oshost.winservice` (the thin pywin32 service), :mod:`~agent.oshost.cli`.
"""

from __future__ import annotations
