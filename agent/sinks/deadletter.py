"""Dead letters: ``state_dir/dead-letter/WEBHOOK.jsonl``, one JSON object per batch.

Each entry: ``time`` (RFC 3339), ``webhook``, ``webhook_id``, ``reason`` (``rejected``
for a permanent status, ``expired`` past ``retry.max_elapsed``), ``status`` (or null),
``response`` (the first KiB of the body) and ``events`` (the notification objects of §5,
whatever the webhook's ``payload`` and ``body``: a replay queues them again, and they
are wrapped and joined anew in the webhook's form when sent).

Files are opened through ``agent.statedir``: never through a symbolic link. Reading
gives the well-formed entries and, for each torn or invalid line, a problem naming it;
a bad line never stops the reading. ``take_dead_letters`` (a replay) reads the whole
file, lets the caller keep the entries, and only then moves the file aside; appends in
this process wait meanwhile, so an entry is neither lost nor replayed twice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agent.errors import StateError
from agent.statedir import open_dir, open_file

DIRECTORY = "dead-letter"
#: Appends and a replay's read-and-move, within one process (the agent's sinks and its
#: replay requests); across processes the state_dir lock keeps a replay from running
#: beside an agent.
_FILES = threading.Lock()


def dead_letter_path(state_dir: Path, webhook: str) -> Path:
    return state_dir / DIRECTORY / f"{webhook}.jsonl"


def write_dead_letter(
    state_dir: Path,
    webhook: str,
    webhook_id: str,
    reason: str,
    status: int | None,
    response: bytes,
    events: bytes,
) -> None:
    """Append one batch to the webhook's dead-letter file and fsync it. Raises OSError
    if it cannot be written, leaving no part of the entry behind (the caller keeps the
    batch and writes it again later)."""
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "webhook": webhook,
        "webhook_id": webhook_id,
        "reason": reason,
        "status": status,
        "response": response[:1024].decode("utf-8", errors="replace"),
        "events": orjson.Fragment(events),  # a JSON array
    }
    data = orjson.dumps(entry) + b"\n"
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    with _FILES:
        fd = open_file(state_dir, DIRECTORY, f"{webhook}.jsonl", flags=flags)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "the entry was written in part")
                os.fsync(fd)
            except OSError:
                # Leave no torn line behind: the retry writes the whole entry again.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


@dataclass(frozen=True)
class DeadLetters:
    """What one dead-letter file holds: each well-formed entry with its line number,
    and one ``LINE N: why`` for each line that is torn or not an entry."""

    path: Path
    entries: list[tuple[int, dict[str, Any]]]
    problems: list[str]


def read_dead_letters(state_dir: Path, webhook: str, max_bytes: int | None = None) -> DeadLetters:
    """The webhook's dead letters (none if it has no file). A file over ``max_bytes`` is
    refused (StateError) before it is read."""
    path = dead_letter_path(state_dir, webhook)
    try:
        fd = open_file(state_dir, DIRECTORY, path.name, flags=os.O_RDONLY)
    except FileNotFoundError:
        return DeadLetters(path, [], [])
    except OSError as exc:
        raise StateError(f"cannot read the dead letters {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        try:
            size = os.fstat(fd).st_size
            if max_bytes is not None and size > max_bytes:
                raise StateError(f"{path} is {size} bytes, more than the spool's max_bytes")
            data = handle.read()
        except OSError as exc:
            raise StateError(f"cannot read the dead letters {path}: {exc.strerror}") from exc
    return parse_dead_letters(path, data)


def parse_dead_letters(path: Path, data: bytes) -> DeadLetters:
    entries: list[tuple[int, dict[str, Any]]] = []
    problems: list[str] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            torn = number == data.count(b"\n") + 1  # the last line, with no newline
            problems.append(f"line {number}: {'torn' if torn else 'not JSON'}; skipped")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("events"), list):
            problems.append(f"line {number}: not a dead-letter entry (no events list); skipped")
            continue
        entries.append((number, entry))
    return DeadLetters(path, entries, problems)


def take_dead_letters(
    state_dir: Path,
    webhook: str,
    keep: Callable[[DeadLetters], None],
    max_bytes: int | None = None,
) -> Path | None:
    """Read the webhook's whole dead-letter file, hand it to ``keep`` (which queues the
    entries again), then move it aside as ``WEBHOOK.replayed-TIME.jsonl``; returns that
    path, or None if there was no file. If ``keep`` raises, the file stays as it was; a
    crash between ``keep`` and the move replays the entries again next time (at least
    once). Batches dead-lettered after this go to a new file: not lost, not replayed
    twice.
    """
    with _FILES:
        letters = read_dead_letters(state_dir, webhook, max_bytes)
        if not letters.entries and not letters.problems:
            return None
        keep(letters)
        try:
            with open_dir(state_dir, DIRECTORY) as dir_fd:
                aside = _unused_name(dir_fd, webhook)
                os.rename(letters.path.name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            raise StateError(f"cannot move {letters.path} aside: {exc.strerror}") from exc
        return letters.path.with_name(aside)


def _unused_name(dir_fd: int, webhook: str) -> str:
    """``WEBHOOK.replayed-TIME.jsonl``, with ``-N`` after TIME if that name is taken."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 1000):
        name = f"{webhook}.replayed-{stamp}{'' if n == 1 else f'-{n}'}.jsonl"
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return name
    raise StateError(f"too many replays of {webhook} within one second")
