"""The ``scanfort`` command line: one entry point; each package registers its commands.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)`` which adds its
subcommands; every subcommand sets ``func`` (taking the parsed namespace and returning
an exit code). Exit codes: 0 all ok, 1 some inputs failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

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


DESCRIPTION = """\
ScanFort protects medical images where they are made. On a modality or reading-room
workstation its agent watches the output folders and encrypts every new scan at image
level (a chaos cipher with a fresh S-box per image, wrapped in age for the site's
public key) before it leaves the machine, forwards the protected copy (central service,
PACS by STOW-RS or C-STORE, a share) and keeps the original until every destination has
acknowledged a copy proven to restore. The central service shows the fleet's health and
never holds a private key; the reading gateway decrypts for entitled radiologists (DICOMweb,
OHIF) and audits every view."""

EPILOG = """\
start here:
  scanfort demo                         central + agent on loopback with sample scans
  scanfort keygen -o site.key           the site identity (keep it on the gateway only)
  scanfort encrypt -r age1… -o OUT IN   protect files or folders by hand
  scanfort agent init --help            set up the agent on a workstation
  scanfort COMMAND --help               options of a command (defaults shown)

exit codes: 0 all ok, 1 some inputs failed, 2 usage error"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (unless its text already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        hidden = (default is None or default is False or default == argparse.SUPPRESS
                  or (isinstance(default, list | tuple | dict) and not default))
        if action.option_strings and not hidden and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style (``scanfort: error: …``, exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"scanfort: error: {message}\n")
        raise SystemExit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or only for ``command`` when that is a known word."""
    parser = _Parser(prog="scanfort", description=DESCRIPTION, epilog=EPILOG)
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
