"""The ``scanfort`` command: one entry point, subcommands registered by each package.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)`` which adds its
subcommands; every subcommand sets ``func`` (taking the parsed namespace and returning
an exit code). Exit codes: 0 all ok, 1 some inputs failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from protocol import __version__

# module → the command words it registers. A run of one command imports only its module
# (the agent's long-running process stays free of the cipher, numpy and pydicom, which only
# its protect workers load); help and unknown words import them all.
_COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "scanfort.cli_cipher": ("cipher-report", "bench"),
    "scanfort.cli_protect": ("keygen", "encrypt", "decrypt", "inspect"),
    "agent.cli": ("agent",),
    "agent.oshost.cli": ("service",),
    "service.cli": ("central",),
    "scanfort.cli_gateway": ("gateway",),
    "scanfort.cli_demo": ("demo",),
}


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style (``scanfort: error: …``, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"scanfort: error: {message}\n")
        raise SystemExit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or only for ``command`` when that is a known word."""
    parser = _Parser(prog="scanfort", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"scanfort {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = [m for m, words in _COMMAND_MODULES.items() if command in words]
    for name in modules or _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["_protect-worker"]:
        # The agent's protect worker (agent.protect), started by the agent itself from the
        # frozen binary; no parser, no command modules: a child imports only what it uses.
        from agent.protect import main as worker_main

        return worker_main()
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(words)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        sys.stderr.write("scanfort: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
