"""The paths of an agent config that the service must be able to write, on any OS."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def writable_paths(config: Any) -> list[str]:
    """Every path in an ``AgentConfig`` the agent writes to (systemd ReadWritePaths, Windows ACL grants).

    Watched folders (plaintext is moved or deleted once acknowledged, and partial-file
    checks open them), their ``move_to`` folders, ``folder`` destinations, the spool and
    the log directory.
    """
    paths: list[Path] = [config.spool_dir, config.log_dir]
    for folder in config.folders:
        paths.append(folder.path)
        if folder.move_to is not None:
            paths.append(folder.move_to)
    for dest in config.destinations:
        if dest.kind == "folder" and dest.path is not None:
            paths.append(dest.path)
    return [str(p) for p in paths]
