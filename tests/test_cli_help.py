"""Every command's ``--help`` ends with an example that runs ``tailhook``."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from agent.cli import build_parser
from tests.support.agent_process import REPO


def command_paths(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """``()`` and the words of every command and sub-command the parser has."""
    paths = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*path, name))
    return paths


COMMANDS = command_paths(build_parser())


def test_the_commands_are_all_found() -> None:
    assert {" ".join(path) for path in COMMANDS} >= {
        "",
        "run",
        "check-config",
        "validate",
        "test-webhook",
        "demo",
        "dead-letter",
        "dead-letter list",
        "dead-letter replay",
        "completion",
    }


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words) or "tailhook")
def test_help_shows_an_example(words: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", *words, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    found = re.search(r"^examples?:\n((?:  .*\n)+)", result.stdout, re.MULTILINE | re.IGNORECASE)
    assert found, result.stdout
    assert "tailhook" in found.group(1).splitlines()[0].split(), found.group(1)
    # The example's command is the one whose help this is.
    assert " ".join(words) in found.group(1)
