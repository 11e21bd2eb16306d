"""``tailhook validate`` (CONTRACT §2): streamed, line numbers kept, unreadable files apart."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
