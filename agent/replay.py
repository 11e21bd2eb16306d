"""Replaying dead letters: a webhook's dead-lettered batches queued again, for it alone.

Only the process holding the ``state_dir`` lock writes the spool, so
``tailhook dead-letter replay`` (``replay``) goes one of two ways:

- the lock is free (no agent runs): it takes the lock, opens the spool and replays
  itself (``replay_dead_letters``), then lets go;
- an agent holds it: it asks that agent. It writes ``state_dir/requests/ID.request``
  (``{"replay": WEBHOOK}``, written whole under another name and renamed), which the
  agent picks up within a second (``answer_requests``, from its once-a-second loop),
  carries out, and answers in ``ID.answer``. The command waits up to ``ANSWER_WAIT``.
  If the agent stops meanwhile without having taken the request, the command withdraws
  it and replays itself; if the agent never takes it, the command withdraws it and
  fails with ``state_dir PATH is in use by process N``. Taking and withdrawing are both
  an unlink of the request: exactly one side succeeds.

Either way the dead-letter file is read whole (a torn or invalid line is reported and
skipped) and its events kept in the spool, targeted at that webhook, in one transaction
before the file is moved aside; no other webhook's cursor or segments are touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from agent.errors import StateDirInUse, StateError
from agent.formats import EVENT_TYPES
from agent.sinks.deadletter import DeadLetters, take_dead_letters
from agent.spool import NewSegment, Spool
from agent.statedir import (
    StateDirLock,
    open_dir,
    read_small_file,
    write_file_atomically,
)
from agent.telemetry import fields

log = logging.getLogger(__name__)

REQUESTS = "requests"
#: How long the command waits for the running agent to answer.
ANSWER_WAIT = 30.0
POLL_INTERVAL = 0.1
MAX_REQUEST_BYTES = 4096
#: Requests carried out per tick of the agent's loop; the rest wait for the next tick.
MAX_REQUESTS_PER_TICK = 8
#: Answers nobody collected (the command was killed) are removed after this long.
STALE_AFTER = 600.0


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did: events and batches queued again, lines skipped, and the name
    the dead-letter file was moved to (None: the webhook had no dead letters)."""

    webhook: str
    events: int = 0
    batches: int = 0
    skipped: tuple[str, ...] = ()
    kept_as: str | None = None


def replay_dead_letters(state_dir: Path, spool: Spool, webhook: str) -> ReplayOutcome:
    """Queue ``webhook``'s dead letters again in ``spool`` (its owner's), for it alone."""
    done: dict[str, Any] = {}

    def keep(letters: DeadLetters) -> None:
        segments, skipped = _segments(letters)
        done["events"] = spool.replay(webhook, segments)
        done["batches"] = len(segments)
        done["skipped"] = tuple(skipped)

    aside = take_dead_letters(state_dir, webhook, keep, spool.max_bytes)
    if aside is None:
        return ReplayOutcome(webhook)
    return ReplayOutcome(webhook, kept_as=aside.name, **done)


def _segments(letters: DeadLetters) -> tuple[list[NewSegment], list[str]]:
    """One segment per dead-lettered batch; events of no known type are skipped."""
    segments = []
    skipped = list(letters.problems)
    for number, entry in letters.entries:
        objects = entry["events"]
        known = [
            (obj["object_type"], orjson.dumps(obj))
            for obj in objects
            if isinstance(obj, dict) and obj.get("object_type") in EVENT_TYPES
        ]
        if len(known) < len(objects):
            left = len(objects) - len(known)
            skipped.append(f"line {number}: {left} events of no known object_type; skipped")
        if known:
            segments.append(NewSegment.of(known))
    return segments, skipped


# -- the command's side ---------------------------------------------------------------


def replay(state_dir: Path, webhook: str, open_spool: Callable[[], Spool]) -> ReplayOutcome:
    """Replay ``webhook``'s dead letters here if no agent runs, else through the agent."""
    try:
        lock = StateDirLock.acquire(state_dir)
    except StateDirInUse as busy:
        return _through_agent(state_dir, webhook, busy, open_spool)
    try:
        return _replay_here(state_dir, webhook, open_spool)
    finally:
        lock.release()


def _replay_here(state_dir: Path, webhook: str, open_spool: Callable[[], Spool]) -> ReplayOutcome:
    spool = open_spool()
    try:
        return replay_dead_letters(state_dir, spool, webhook)
    finally:
        spool.close()


def _through_agent(
    state_dir: Path, webhook: str, busy: StateDirInUse, open_spool: Callable[[], Spool]
) -> ReplayOutcome:
    request = uuid.uuid4().hex
    asking = _dump({"replay": webhook})
    write_file_atomically(state_dir, REQUESTS, f"{request}.request", data=asking)
    deadline = time.monotonic() + ANSWER_WAIT
    while time.monotonic() < deadline:
        answer = _collect_answer(state_dir, request)
        if answer is not None:
            return answer
        try:
            lock = StateDirLock.acquire(state_dir)
        except StateDirInUse as still:
            busy = still
            time.sleep(POLL_INTERVAL)
            continue
        try:  # the agent stopped
            if _withdraw(state_dir, request):
                return _replay_here(state_dir, webhook, open_spool)
            answer = _collect_answer(state_dir, request)
            if answer is not None:
                return answer
            raise StateError("the agent took the replay request but stopped before answering")
        finally:
            lock.release()
    if _withdraw(state_dir, request):
        raise busy  # never taken: nothing was done
    raise StateError(
        f"{busy}, which took the replay request but did not answer within {ANSWER_WAIT:g} s"
        " (see its log)"
    )


def _collect_answer(state_dir: Path, request: str) -> ReplayOutcome | None:
    name = f"{request}.answer"
    try:
        data = read_small_file(state_dir, REQUESTS, name, limit=1 << 20)
    except FileNotFoundError:
        return None
    with open_dir(state_dir, REQUESTS) as dir_fd:
        os.unlink(name, dir_fd=dir_fd)
    try:
        answer = orjson.loads(data)
        if not answer["ok"]:
            raise StateError(f"the running agent could not replay: {answer['error']}")
        outcome = dict(answer["outcome"])
        return ReplayOutcome(**{**outcome, "skipped": tuple(outcome["skipped"])})
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise StateError(f"the running agent's answer cannot be read: {exc}") from exc


def _withdraw(state_dir: Path, request: str) -> bool:
    """Remove our request; False if the agent took it first."""
    with open_dir(state_dir, REQUESTS) as dir_fd:
        try:
            os.unlink(f"{request}.request", dir_fd=dir_fd)
        except FileNotFoundError:
            return False
    return True


def _dump(value: Any) -> bytes:
    return orjson.dumps(value)


# -- the agent's side -----------------------------------------------------------------


def answer_requests(state_dir: Path, spool: Spool, enabled: Collection[str]) -> None:
    """Carry out the replay requests waiting in ``state_dir/requests`` (the agent)."""
    with open_dir(state_dir, REQUESTS, create=True) as dir_fd:
        names = sorted(name for name in os.listdir(dir_fd) if name.endswith(".request"))
        _remove_stale(dir_fd)
    for name in names[:MAX_REQUESTS_PER_TICK]:
        request = name.removesuffix(".request")
        try:
            data = read_small_file(state_dir, REQUESTS, name, limit=MAX_REQUEST_BYTES)
            with open_dir(state_dir, REQUESTS) as dir_fd:
                os.unlink(name, dir_fd=dir_fd)  # taken: the command can no longer withdraw it
        except FileNotFoundError:
            continue  # withdrawn
        try:
            answer = _carry_out(state_dir, spool, enabled, data)
        except Exception:
            log.exception("A dead-letter replay request failed", extra=fields(request=request))
            answer = {"ok": False, "error": "unexpected error; see the agent's log"}
        write_file_atomically(state_dir, REQUESTS, f"{request}.answer", data=_dump(answer))


def _carry_out(
    state_dir: Path, spool: Spool, enabled: Collection[str], data: bytes
) -> dict[str, Any]:
    try:
        webhook = orjson.loads(data).get("replay")
    except (orjson.JSONDecodeError, AttributeError):
        webhook = None
    if not isinstance(webhook, str):
        return {"ok": False, "error": "not a replay request"}
    if webhook not in enabled:
        return {"ok": False, "error": f"webhook {webhook!r} is not enabled in its config"}
    try:
        outcome = replay_dead_letters(state_dir, spool, webhook)
    except StateError as exc:
        log.error("A dead-letter replay failed", extra=fields(webhook=webhook, error=str(exc)))
        return {"ok": False, "error": str(exc)}
    for problem in outcome.skipped:
        log.warning("A dead-letter line was skipped", extra=fields(webhook=webhook, line=problem))
    log.info(
        "Dead letters queued again",
        extra=fields(webhook=webhook, events=outcome.events, kept_as=outcome.kept_as),
    )
    return {"ok": True, "outcome": asdict(outcome)}


def _remove_stale(dir_fd: int) -> None:
    """Answers nobody collected and temporary files a crash left, once old."""
    now = time.time()
    for name in os.listdir(dir_fd):
        if name.endswith(".request"):
            continue
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > STALE_AFTER:
                os.unlink(name, dir_fd=dir_fd)
