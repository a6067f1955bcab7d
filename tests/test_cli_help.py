"""Every command's ``--help`` reads as plain text and describes every command and
argument: ``gochat-admin``, ``gochat-appliance`` and ``gochat-server``, down to each
subcommand."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable, Iterator

import pytest

from appliance.deploy import admin
from appliance.device import main as appliance_main
from appliance.server import main as server_main

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "gochat-admin": admin.build_parser,
    "gochat-appliance": appliance_main.build_parser,
    "gochat-server": server_main.build_parser,
    "gochat-server check-config": server_main.build_check_parser,
}


def commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from commands(sub)


def everything() -> Iterator[argparse.ArgumentParser]:
    for build in PARSERS.values():
        yield from commands(build())


@pytest.mark.parametrize("parser", list(everything()), ids=lambda p: p.prog)
def test_help_describes_the_command_and_every_argument(parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "``" not in text, text  # no reST markup in a terminal
    assert parser.description, f"{parser.prog} --help says nothing of what it does"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):  # each command's line
            for command in action._choices_actions:
                assert command.help, f"{parser.prog} {command.dest}: no help"
            continue
        named = "/".join(action.option_strings) or action.dest
        assert action.help, f"{parser.prog} {named}: no help"


def test_the_servers_help_names_check_config() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        server_main.main(["--help"])
    assert "gochat-server check-config" in out.getvalue()
