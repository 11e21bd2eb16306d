"""Dead letters: ``state_dir/dead-letter/WEBHOOK.jsonl``, one JSON object per batch.

Each entry: ``time`` (RFC 3339), ``webhook``, ``webhook_id``, ``reason`` (``rejected``
for a permanent status, ``expired`` past ``retry.max_elapsed``), ``status`` (or null),
``response`` (the first KiB of the body) and ``events`` (the notification objects).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson


def dead_letter_path(state_dir: Path, webhook: str) -> Path:
    return state_dir / "dead-letter" / f"{webhook}.jsonl"


def write_dead_letter(
    state_dir: Path,
    webhook: str,
    webhook_id: str,
    reason: str,
    status: int | None,
    response: bytes,
    body: bytes,
) -> None:
    """Append one batch to the webhook's dead-letter file and fsync it."""
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "webhook": webhook,
        "webhook_id": webhook_id,
        "reason": reason,
        "status": status,
        "response": response[:1024].decode("utf-8", errors="replace"),
        "events": orjson.Fragment(body),
    }
    path = dead_letter_path(state_dir, webhook)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, orjson.dumps(entry) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_dead_letters(state_dir: Path, webhook: str) -> Iterator[dict[str, Any]]:
    path = dead_letter_path(state_dir, webhook)
    if path.exists():
        yield from read_entries(path)


def set_aside(state_dir: Path, webhook: str) -> Path | None:
    """Move the webhook's dead-letter file aside (atomically) for a replay; None if empty.

    Batches dead-lettered while the replay runs go to a new file, not lost and not
    replayed twice.
    """
    path = dead_letter_path(state_dir, webhook)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{webhook}.replayed-{stamp}.jsonl")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    return aside


def read_entries(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                entry = orjson.loads(line)
                if isinstance(entry, dict):
                    yield entry
