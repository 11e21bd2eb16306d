"""``tailhook validate`` (CONTRACT §2): streamed, line numbers kept, unreadable files apart;
``--print`` as a dry run of the mapping; a hint when native lines are ModSecurity's."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.formats import MappingContext, load_format
from agent.sources.lines import LongLine
from agent.validate import numbered_lines
from tests.agent_support import hit_line
from tests.support.agent_process import REPO

#: Runs ``tailhook validate ARGS`` as its only child and prints that child's peak RSS (KiB)
#: last on stdout: RUSAGE_CHILDREN of this wrapper covers the validate process alone.
PEAK_RSS = """\
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "agent", "validate", *sys.argv[1:]])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""


def validate(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "validate", *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@pytest.mark.slow
def test_a_300_mb_line_is_never_held(tmp_path: Path) -> None:
    path = tmp_path / "huge.log"
    with path.open("wb") as out:
        out.write(hit_line(1) + b"\n" + b'{"event": "hit", "payload": "')
        out.truncate(300 * 1024 * 1024)  # sparse: 300 MB without writing them
        out.seek(0, os.SEEK_END)
        out.write(b'"}\n' + hit_line(2) + b"\n")
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    *report, peak = done.stdout.splitlines()
    assert done.returncode == 1, done.stderr
    assert report == [
        f"{path}:2: line_too_long: {300 * 1024 * 1024 + 2 - len(hit_line(1)) - 1} bytes",
        "3 lines, 2 valid, 1 invalid",
    ]
    assert int(peak) < 150 * 1024  # KiB: a held line alone would be 300 MB


def test_an_unreadable_file_is_an_error_of_its_own(tmp_path: Path) -> None:
    good = tmp_path / "good.log"
    good.write_bytes(hit_line(1) + b"\n{oops\n")
    directory = tmp_path / "a-directory"
    directory.mkdir()
    missing = tmp_path / "missing.log"
    result = validate(str(directory), str(good), str(missing))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{directory}: cannot be read: Is a directory",
        f"{missing}: cannot be read: No such file or directory",
    ]
    # The other file is still checked, and the counts add up.
    [invalid, summary] = result.stdout.splitlines()
    assert invalid.startswith(f"{good}:2: invalid_json: ")
    assert summary == "2 lines, 1 valid, 1 invalid; 2 of 3 files could not be read"


def test_a_file_that_fails_while_being_read_is_an_error_of_its_own(tmp_path: Path) -> None:
    # Opened fine, then read(2) fails (EIO): even root cannot read it. Lines read before
    # the failure would still count; here there are none.
    good = tmp_path / "good.log"
    good.write_bytes(hit_line(1) + b"\n")
    result = validate("/proc/self/mem", str(good))
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["/proc/self/mem: cannot be read: Input/output error"]
    assert result.stdout.splitlines() == [
        "1 lines, 1 valid, 0 invalid; 1 of 2 files could not be read"
    ]


def test_standard_input_is_read_for_a_dash() -> None:
    result = validate("-", stdin=hit_line(1) + b"\n\n" + b"{oops\n" + hit_line(2))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith("-:3: invalid_json")
    assert result.stdout.splitlines()[-1] == "3 lines, 2 valid, 1 invalid"


def test_lines_are_numbered_in_order_around_over_long_ones() -> None:
    data = b"\xef\xbb\xbfa\r\n" + b"x" * 50 + b"\nb\n\n" + b"y" * 7 + b"\nc"
    handle = io.BytesIO(data)
    got = list(numbered_lines(handle, max_line_bytes=10))
    assert got == [
        (1, b"a\r"),
        (2, LongLine(b"x" * 50, 50)),
        (3, b"b"),
        (4, b""),
        (5, b"y" * 7),
        (6, b"c"),
    ]


def test_numbering_holds_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.validate

    monkeypatch.setattr(agent.validate, "CHUNK_BYTES", 3)
    lines = [b"one", b"z" * 20, b"two", b"", b"three"]
    got = list(numbered_lines(io.BytesIO(b"\n".join(lines) + b"\n"), max_line_bytes=8))
    lengths = [(n, line.length if isinstance(line, LongLine) else line) for n, line in got]
    assert lengths == [(1, b"one"), (2, 20), (3, b"two"), (4, b""), (5, b"three")]


# -- --print: a dry run of the mapping; the hint for ModSecurity lines ------------------

NATIVE = REPO / "tests" / "data" / "native" / "detections.jsonl"
MODSECURITY = [
    REPO / "tests" / "data" / "modsecurity" / name
    for name in ("blocked.jsonl", "apache-blocked.jsonl")
]


def mapped(path: Path, format_name: str) -> list[dict[str, Any]]:
    """What the agent's format maps each line of ``path`` to (nothing: not printed)."""
    fmt = load_format(format_name)
    objects = []
    for line in path.read_bytes().splitlines():
        _, notification = fmt.convert(orjson.loads(line), MappingContext())
        if notification is not None:
            objects.append(notification)
    return objects


def test_print_writes_each_valid_lines_notification_and_only_json_to_stdout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mixed.log"
    native = NATIVE.read_bytes().splitlines()
    path.write_bytes(b"\n".join([native[0], b"{oops", *native[1:], b'{"event": "nope"}']) + b"\n")
    result = validate("--print", str(path))
    assert result.returncode == 1
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == mapped(NATIVE, "native")
    assert [obj["object_type"] for obj in printed] == ["hit", "vulnerability", "system", "scope"]
    # The reports and the summary moved to stderr: stdout is for jq alone.
    [bad_json, unknown, summary] = result.stderr.splitlines()
    assert bad_json.startswith(f"{path}:2: invalid_json: ")
    assert unknown.startswith(f"{path}:6: unknown_event: ")
    assert summary == "6 lines, 4 valid, 2 invalid"


def test_print_reads_standard_input_too() -> None:
    result = validate("--print", "-", stdin=hit_line(1) + b"\n\n" + hit_line(2) + b"\n")
    assert result.returncode == 0, result.stderr
    ids = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert ids == [["hit-1"], ["hit-2"]]
    assert result.stderr == "2 lines, 2 valid, 0 invalid\n"


def test_print_of_modsecurity_lines_skips_transactions_without_rule_messages(
    tmp_path: Path,
) -> None:
    lines = [orjson.loads(line) for line in MODSECURITY[0].read_bytes().splitlines()]
    quiet = {**lines[0], "transaction": {**lines[0]["transaction"], "messages": []}}
    path = tmp_path / "audit.log"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in [quiet, *lines]) + b"\n")
    result = validate("--format", "modsecurity", "--print", str(path), *map(str, MODSECURITY[1:]))
    assert result.returncode == 0, result.stderr
    # Exactly what the agent maps: our quiet copy of the first line adds nothing.
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == mapped(MODSECURITY[0], "modsecurity") + mapped(MODSECURITY[1], "modsecurity")
    total = len(lines) + 1 + len(MODSECURITY[1].read_bytes().splitlines())
    assert result.stderr == f"{total} lines, {total} valid, 0 invalid\n"


def test_print_escapes_terminal_controls_an_attacker_put_in_a_payload(tmp_path: Path) -> None:
    hit = orjson.loads(hit_line(1))
    hit["payloads"] = ["\x9b31m\x7f\x1b[2J red"]  # CSI, DEL, ESC: would reach the terminal
    path = tmp_path / "hostile.log"
    path.write_bytes(orjson.dumps(hit) + b"\n")
    result = validate("--print", str(path))
    assert result.returncode == 0, result.stderr
    assert not any(0x7F <= ord(char) <= 0x9F or char == "\x1b" for char in result.stdout)
    assert "\\u009b31m\\u007f\\u001b[2J red" in result.stdout
    assert json.loads(result.stdout)["payloads"] == hit["payloads"]


def test_a_closed_pipe_stops_print_quietly(tmp_path: Path) -> None:
    path = tmp_path / "many.log"
    path.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(3000)))  # ~2 MB printed
    with subprocess.Popen(
        [sys.executable, "-m", "agent", "validate", "--print", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert json.loads(process.stdout.readline())["id"] == ["hit-0"]
        process.stdout.close()  # as `| head -n 1` does
        assert process.wait(60) == 141
        assert process.stderr.read() == b""  # no traceback, no "cannot be read"


def test_native_check_of_modsecurity_lines_hints_at_the_format(tmp_path: Path) -> None:
    result = validate(*map(str, MODSECURITY))
    assert result.returncode == 1
    assert all(": unknown_event: " in line for line in result.stdout.splitlines()[:-1])
    assert result.stderr.splitlines() == [
        f"{path}: hint: these look like ModSecurity audit log lines; try --format modsecurity"
        for path in MODSECURITY
    ]
    # Through standard input as well.
    piped = validate("-", stdin=MODSECURITY[0].read_bytes())
    assert piped.stderr == (
        "-: hint: these look like ModSecurity audit log lines; try --format modsecurity\n"
    )


def test_no_hint_unless_every_line_of_the_file_looks_like_modsecurity(tmp_path: Path) -> None:
    audit = MODSECURITY[0].read_bytes()
    mixed = tmp_path / "mixed.log"
    mixed.write_bytes(audit + b"{oops\n")
    other = tmp_path / "other.log"
    other.write_bytes(b'{"event": "nope", "transaction": "not an object"}\n')
    result = validate(str(mixed), str(other))
    assert result.returncode == 1
    assert result.stderr == ""
    assert validate("--format", "modsecurity", str(MODSECURITY[0])).stderr == ""
