"""Shell completion, for real: bash sources the script ``tailhook completion bash``
prints and calls its function with ``COMP_WORDS``/``COMP_CWORD`` set; zsh (Debian's, which
``.ci/run`` installs; without it the zsh test skips, except in CI) runs in a pseudo
terminal with ``compinit`` and gets TAB typed at it. Webhook names come from the config
the line names (``-c``), else ``$TAILHOOK_CONFIG``, and an unreadable config completes
nothing and prints nothing."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.completion import NAME, webhook_names
from agent.config.kinds import Name
from agent.errors import ConfigError
from tests.support.agent_process import REPO

CONFIG = """\
state_dir: /var/lib/tailhook
webhooks:
  - {name: soc, url: "https://siem.example.com/${SOC_TOKEN}", events: [hit]}
  - name: archive
    url: https://archive.example.com
    events: [hit]
  - name: "not a name"
  - name: 42
  - url: https://nameless.example.com
"""
COMMANDS = ["run", "check-config", "validate", "test-webhook", "demo", "dead-letter", "completion"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A directory holding a config, two log files, and ``bin/tailhook``: this checkout."""
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "detections.log").touch()
    (tmp_path / "detections.old").touch()
    (tmp_path / "logs").mkdir()
    command = tmp_path / "bin" / "tailhook"
    command.parent.mkdir()
    command.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m agent "$@"\n')
    command.chmod(0o755)
    return tmp_path


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "TAILHOOK_CONFIG"}
    path = f"{home / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return {**env, "HOME": str(home), "PATH": path, **extra}


# -- bash -------------------------------------------------------------------------------

BASH = """\
source "$1"; shift
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
_tailhook
printf '%s\\n' "${COMPREPLY[@]}"
"""


def bash_completes(home: Path, *words: str, **env: str) -> list[str]:
    """COMPREPLY for the command line ``words`` (the last is the word being completed)."""
    script = home / "tailhook.bash"
    if not script.exists():
        printed = subprocess.run(
            ["tailhook", "completion", "bash"],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment(home),
            check=True,
        )
        script.write_text(printed.stdout)
    result = subprocess.run(
        ["bash", "-c", BASH, "bash", str(script), *words],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=home,
        env=environment(home, **env),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing lands in the terminal
    return sorted(line for line in result.stdout.splitlines() if line)


BASH_CASES = [
    (["tailhook", ""], sorted(COMMANDS)),
    (["tailhook", "d"], ["dead-letter", "demo"]),
    (["tailhook", "--"], ["--help", "--version"]),
    (["tailhook", "dead-letter", ""], ["list", "replay"]),
    (["tailhook", "dead-letter", "list", "--"], ["--config", "--help", "--json", "--show"]),
    (["tailhook", "validate", "--"], ["--format", "--help", "--print"]),
    (["tailhook", "validate", "--format", ""], ["modsecurity", "native"]),
    (["tailhook", "validate", "--format", "=", "m"], ["modsecurity"]),  # --format=m
    (
        ["tailhook", "validate", "--print", "--format", "native", "det"],
        ["detections.log", "detections.old"],
    ),
    (["tailhook", "validate", "lo"], ["logs"]),  # a directory, to walk into
    (["tailhook", "run", "-c", "conf"], ["config.yaml"]),
    (["tailhook", "completion", ""], ["bash", "webhooks", "zsh"]),
    (["tailhook", "demo", "--linger", ""], []),
]


@pytest.mark.parametrize(
    ("words", "expected"),
    BASH_CASES,
    ids=[" ".join(words[1:]) + "<TAB>" for words, _ in BASH_CASES],
)
def test_bash_completes_commands_options_values_and_files(
    home: Path, words: list[str], expected: list[str]
) -> None:
    assert bash_completes(home, *words) == expected


@pytest.mark.parametrize(
    "words",
    [
        ["tailhook", "test-webhook", "-c", "config.yaml", ""],
        ["tailhook", "dead-letter", "list", "--config", "=", "config.yaml", ""],  # --config=
        ["tailhook", "dead-letter", "replay", "-cconfig.yaml", ""],
        ["tailhook", "dead-letter", "list", "--json", "-c", "~/config.yaml", ""],
    ],
    ids=lambda words: " ".join(words[1:]) + "<TAB>",
)
def test_bash_completes_the_webhook_names_of_the_config_on_the_line(
    home: Path, words: list[str]
) -> None:
    assert bash_completes(home, *words) == ["archive", "soc"]


def test_bash_takes_the_config_from_the_environment_and_prints_no_errors(home: Path) -> None:
    config = str(home / "config.yaml")
    assert bash_completes(home, "tailhook", "test-webhook", "s", TAILHOOK_CONFIG=config) == ["soc"]
    # Only one name, and only where a name goes.
    assert bash_completes(home, "tailhook", "test-webhook", "soc", "", TAILHOOK_CONFIG=config) == []
    # No config at all, or one that is not YAML: no names, and no error in the terminal
    # (bash_completes asserts an empty stderr).
    missing = str(home / "missing.yaml")
    assert (
        bash_completes(home, "tailhook", "dead-letter", "list", "", TAILHOOK_CONFIG=missing) == []
    )
    (home / "broken.yaml").write_text("webhooks: [\n")
    assert bash_completes(home, "tailhook", "test-webhook", "-c", "broken.yaml", "") == []


# -- the names --------------------------------------------------------------------------


def test_names_come_from_the_yaml_without_secrets_set_or_aliases_expanded(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    assert webhook_names(config) == ["soc", "archive"]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + n)}: &{chr(98 + n)} [*{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, "
        f"*{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}]\n"
        for n in range(12)
    )  # 10 * 8**12 values once expanded
    config.write_text(bomb + "webhooks: [{name: soc, url: x, events: [*m]}]\n")
    started = time.monotonic()
    assert webhook_names(config) == ["soc"]
    assert time.monotonic() - started < 5
    config.write_text("webhooks: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        webhook_names(config)


def test_the_name_rule_is_the_configs() -> None:
    assert f"^{NAME.pattern}(?!\\n)$" == Name.definition["pattern"]


# -- zsh --------------------------------------------------------------------------------


@pytest.fixture
def zsh() -> str:
    found = shutil.which("zsh")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("zsh is missing: CI must install Debian's zsh package")
        pytest.skip("zsh is not installed")
    return found


class Terminal:
    """An interactive ``zsh -f`` in a pseudo terminal, completion initialised with the
    script ``tailhook completion zsh`` printed, in ``home``."""

    def __init__(self, zsh: str, home: Path, env: dict[str, str]) -> None:
        functions = home / "zfunc"
        functions.mkdir()
        printed = subprocess.run(
            ["tailhook", "completion", "zsh"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=True,
        )
        (functions / "_tailhook").write_text(printed.stdout)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: nothing but exec
            os.chdir(home)
            os.execve(zsh, [zsh, "-f", "-i"], {**env, "TERM": "dumb"})
        self.send(f"PS1='> '; fpath=({functions} $fpath); autoload -Uz compinit; compinit -u -D\n")
        self.run_marker()

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def read_until(self, pattern: bytes, timeout: float = 30) -> bytes:
        output = b""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, output):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} within {timeout} s; got {output!r}"
            if select.select([self.fd], [], [], left)[0]:
                output += os.read(self.fd, 65536)
        return output

    def run_marker(self) -> bytes:
        """All zsh wrote until it ran a command typed after what came before: zle takes
        keys in order, so a completion has finished by then."""
        self.send("echo DONE$((6 * 7))\n")
        return self.read_until(rb"DONE42\r?\n")

    def complete(self, line: str, shown: str) -> str:
        """What the terminal shows after ``line`` and a TAB, up to the regular expression
        ``shown``; then the line is dropped. It waits for ``shown`` before typing on:
        zsh lists no matches while keys are waiting."""
        self.send(line + "\t")
        output = self.read_until(shown.encode())
        self.send("\x15")  # Ctrl-U: the line typed so far is dropped
        self.run_marker()
        return output.decode(errors="replace")

    def close(self) -> None:
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def terminal(zsh: str, home: Path) -> Iterator[Terminal]:
    session = Terminal(zsh, home, environment(home))
    try:
        yield session
    finally:
        session.close()


def test_zsh_completes_commands_names_values_and_files(terminal: Terminal) -> None:
    listed = terminal.complete("tailhook ", r"\nvalidate +-- .*\n")
    for command in COMMANDS:
        assert re.search(rf"\n{command} +-- ", listed), listed
    terminal.complete("tailhook test-w", "tailhook test-webhook ")
    terminal.complete("tailhook dead-letter l", "tailhook dead-letter list ")
    names = terminal.complete("tailhook dead-letter list -c config.yaml ", r"\narchive +soc\r?\n")
    assert "not a name" not in names
    terminal.complete("tailhook test-webhook -c config.yaml s", "config.yaml soc ")
    terminal.complete("tailhook dead-letter replay --config=config.yaml a", "yaml archive ")
    terminal.complete("tailhook validate --format=m", "--format=modsecurity ")
    terminal.complete("tailhook validate --format ", r"\nmodsecurity +native\r?\n")
    terminal.complete("tailhook validate --print lo", "--print logs/")
    options = terminal.complete("tailhook dead-letter list --", r"\n--show +-- .*\n")
    for option in ("--config", "--json", "--help"):
        assert re.search(rf"\n{option} +-- ", options), options


def test_zsh_without_a_readable_config_completes_no_name_and_prints_nothing(
    zsh: str, home: Path
) -> None:
    session = Terminal(zsh, home, environment(home, TAILHOOK_CONFIG=str(home / "missing.yaml")))
    try:
        shown = session.complete("tailhook test-webhook ", "\x07")  # the bell: no match
    finally:
        session.close()
    assert shown.endswith("tailhook test-webhook \x07"), shown  # nothing listed, no error
