"""What each command does, once the command line is parsed (``cli`` owns exit codes)."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from agent.config import Config, load_config
from agent.errors import ConfigError, DeliveryError, Problem, RejectedLine
from agent.formats import EVENT_TYPES, EventFormat, MappingContext, load_format
from agent.pipeline import decode_line, is_blank
from agent.service import Agent
from agent.sinks.deadletter import read_dead_letters, read_entries, set_aside
from agent.sinks.transport import Transport
from agent.sinks.webhook import request_headers
from agent.spool import NewSegment, Spool, new_webhook_id
from agent.telemetry import Metrics, setup_logging

MAX_VALIDATE_LINE = 1024 * 1024


def run(config_path: Path) -> int:
    config = load_config(config_path)
    setup_logging(config.log.level, config.log.format)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return Agent(config).run_until_signalled()


def check_config(config_path: Path) -> int:
    config = load_config(config_path)
    for source in config.sources:
        load_format(source.format)  # compiles the schemas the config uses
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config_path}: valid ({len(config.sources)} sources, {len(config.webhooks)} webhooks)")
    return 0


def validate(files: list[str], format_name: str) -> int:
    fmt = load_format(format_name)
    ctx = MappingContext()
    total = invalid = 0
    for name in files:
        try:
            handle = open(name, "rb")  # noqa: SIM115 (closed below, read line by line)
        except OSError as exc:
            print(f"{name}: cannot be read: {exc.strerror}")
            invalid += 1
            continue
        with handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.rstrip(b"\n").removesuffix(b"\r")
                if number == 1:
                    line = line.removeprefix(b"\xef\xbb\xbf")
                if is_blank(line):
                    continue
                total += 1
                reason = _check_line(line, fmt, ctx)
                if reason is not None:
                    invalid += 1
                    print(f"{name}:{number}: {reason}")
    print(f"{total} lines, {total - invalid} valid, {invalid} invalid")
    return 0 if invalid == 0 else 1


def _check_line(line: bytes, fmt: EventFormat, ctx: MappingContext) -> str | None:
    if len(line) > MAX_VALIDATE_LINE:
        return f"line_too_long: {len(line)} bytes"
    try:
        obj = decode_line(line)
        fmt.convert(obj, ctx)
    except RejectedLine as rejected:
        return f"{rejected.reason}: {rejected.detail}"
    return None


def _find_webhook(config: Config, name: str) -> int:
    for index, hook in enumerate(config.webhooks):
        if hook.name == name:
            return index
    raise ConfigError([Problem("webhooks", f"no webhook is named {name!r}")])


def test_webhook(config_path: Path, name: str) -> int:
    from agent.demo import test_notifications

    config = load_config(config_path)
    hook = config.webhooks[_find_webhook(config, name)]
    body = test_notifications(hook.events, config.console_url)
    headers = request_headers(hook, new_webhook_id(), body)
    transport = Transport(hook)
    try:
        answer = transport.send(body, headers)
    except DeliveryError as exc:
        print(f"{name}: no answer: {exc}")
        return 1
    finally:
        transport.close()
    print(f"{name}: HTTP {answer.status}")
    return 0 if 200 <= answer.status < 300 else 1


def dead_letter_list(config_path: Path, webhook: str | None) -> int:
    config = load_config(config_path)
    names = [webhook] if webhook else [hook.name for hook in config.webhooks]
    for name in names:
        for entry in read_dead_letters(config.state_dir, name):
            events = entry.get("events") or []
            print(
                f"{entry.get('time')}  {entry.get('webhook')}  {entry.get('webhook_id')}  "
                f"{entry.get('reason')}  status={entry.get('status')}  events={len(events)}"
            )
    return 0


def dead_letter_replay(config_path: Path, webhook: str) -> int:
    """Queue the webhook's dead-lettered batches for delivery again, for it alone.

    The events go into the spool as new batches (new ``webhook-id``s), so a running
    agent picks them up within a second and a stopped one at its next start; the
    dead-letter file is kept, renamed ``WEBHOOK.replayed-TIME.jsonl``.
    """
    config = load_config(config_path)
    hook = config.webhooks[_find_webhook(config, webhook)]
    if not hook.enabled:
        raise ConfigError([Problem("webhooks", f"webhook {webhook!r} is disabled")])
    aside = set_aside(config.state_dir, webhook)
    if aside is None:
        print(f"{webhook}: no dead-lettered batches")
        return 0
    spool = Spool(config.state_dir / "spool.db", Metrics(CollectorRegistry()))
    batches = events = 0
    try:
        spool.configure_webhooks({h.name: h.events for h in config.webhooks if h.enabled})
        for entry in read_entries(aside):
            objects = entry.get("events") or []
            segment = NewSegment.of(
                (obj["object_type"], orjson.dumps(obj))
                for obj in objects
                if isinstance(obj, dict) and obj.get("object_type") in EVENT_TYPES
            )
            spool.append("dead-letter-replay", segment, target=webhook)
            batches += 1
            events += len(segment)
    finally:
        spool.close()
    print(
        f"{webhook}: queued {events} events from {batches} batches again; "
        f"the dead letters are kept in {aside.name}"
    )
    return 0
