"""``scanfort --help`` describes the product; every option of every command says what it does."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from scanfort.cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: str):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def _commands():
    return list(_walk(build_parser(), "scanfort"))


def test_top_level_help_describes_the_product(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "dispatcher" not in out and "registered" not in out
    for word in ("workstation", "encrypts", "acknowledged", "gateway", "scanfort demo"):
        assert word in out


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"{path}: {'/'.join(a.option_strings) or a.dest}"
        for path, parser in _commands()
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction
                          | argparse._VersionAction)
        and not (a.help or "").strip()
    ]
    assert missing == []


def test_help_shows_defaults() -> None:
    parser = dict(_commands())["scanfort encrypt"]
    text = parser.format_help()
    assert "--mode {auto,file,dicom}" in text and "(default: auto)" in text
    assert "--jobs N" in text and "(default: " in text.split("--jobs N", 1)[1]


def _scanfort(*argv: str) -> int:
    from scanfort.cli import main

    return main(list(argv))


def test_a_missing_agent_config_points_to_agent_init(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere" / "agent.toml"
    assert _scanfort("agent", "check", "--config", str(missing)) != 0
    err = capsys.readouterr().err
    assert f"{missing}: no such config file" in err
    assert "scanfort agent init" in err


def _load_agent(tmp_path: Path, typo: str) -> None:
    from agent.config import load_config

    (tmp_path / "agent.toml").write_text(f"{typo} = []\n")
    load_config(tmp_path / "agent.toml")


def _load_central(tmp_path: Path, typo: str) -> None:
    from service.settings import CONFIG_NAME, load_settings

    (tmp_path / CONFIG_NAME).write_text(f"{typo} = 1\n")
    load_settings(tmp_path)


def _load_gateway(tmp_path: Path, typo: str) -> None:
    from gateway.config import CONFIG_NAME, load_settings

    (tmp_path / CONFIG_NAME).write_text(f"{typo} = 1\n")
    load_settings(tmp_path)


def _keys(reader: str) -> set[str]:
    if reader == "central":
        from service.settings import _TOML_KEYS as central_keys

        return set(central_keys)
    from gateway.config import _TOML_KEYS as gateway_keys

    return set(gateway_keys)


@pytest.mark.parametrize("reader", ["agent", "central", "gateway"])
def test_unknown_config_keys_suggest_the_closest_one(tmp_path, reader) -> None:
    from agent.errors import ConfigError as AgentConfigError
    from gateway.errors import ConfigError as GatewayConfigError
    from service.errors import ConfigError as CentralConfigError

    if reader == "agent":
        typo, meant = "folderz", "folders"
    else:
        meant = sorted(k for k in _keys(reader) if len(k) > 5)[0]
        typo = meant[:-1] + ("x" if meant[-1] != "x" else "y")
    load = {"agent": _load_agent, "central": _load_central, "gateway": _load_gateway}[reader]
    with pytest.raises((AgentConfigError, CentralConfigError, GatewayConfigError)) as info:
        load(tmp_path, typo)
    assert f"{typo}: unknown key (did you mean {meant!r}?)" in str(info.value)
