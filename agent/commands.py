"""What each command does, once the command line is parsed (``cli`` owns exit codes)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from agent.config import Config, MetricsConfig, load_config, parse_listen_address
from agent.errors import ConfigError, DeliveryError, Problem, StateError
from agent.formats import load_format
from agent.jsonlines import json_line, quoted
from agent.replay import replay
from agent.service import Agent
from agent.sinks.deadletter import dead_letter_path, read_dead_letters
from agent.sinks.transport import Transport
from agent.sinks.webhook import request_headers
from agent.spool import Spool, new_webhook_id
from agent.statedir import check_state_dir
from agent.telemetry import Metrics, fields, setup_logging

__all__ = [
    "check_config",
    "dead_letter_list",
    "dead_letter_replay",
    "run",
    "test_webhook",
    "with_environment",
]

log = logging.getLogger("agent.commands")

#: Overrides ``metrics.listen`` (``HOST:PORT``, ``[IPv6]:PORT``): in a container,
#: probes and scrapes come from outside, so the image sets ``0.0.0.0:9717`` without
#: anyone editing the config.
METRICS_LISTEN_VARIABLE = "TAILHOOK_METRICS_LISTEN"


def with_environment(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """``config`` with the environment's overrides applied (``TAILHOOK_METRICS_LISTEN``);
    an invalid value is a ``ConfigError`` named after its variable (exit 2)."""
    value = environ.get(METRICS_LISTEN_VARIABLE)
    if value is None:
        return config
    try:
        host, port = parse_listen_address(value)
    except ValueError as exc:
        raise ConfigError([Problem(METRICS_LISTEN_VARIABLE, f"{value!r} {exc}")]) from exc
    return replace(config, metrics=MetricsConfig(host=host, port=port))


def _load_with_environment(config_path: Path) -> Config:
    return with_environment(load_config(config_path))


def run(config_path: Path) -> int:
    """``tailhook run``: only log lines reach stderr, in the configured format (JSON
    until the config is read). Exit 2: the config, an override from the environment or
    the state_dir is refused; 1: the state_dir is in use, or cannot be used."""
    setup_logging("info", "json")
    try:
        config = _load_with_environment(config_path)
    except ConfigError as exc:
        _log_problems(exc, config_path)
        return 2
    setup_logging(config.log.level, config.log.format)
    for warning in config.warnings:
        log.warning(warning, extra=fields(config=str(config_path)))
    try:
        return Agent(config).run_until_signalled(config_path, _load_with_environment)
    except ConfigError as exc:
        _log_problems(exc, config_path)
        return 2
    except StateError as exc:
        log.error(str(exc), extra=fields(state_dir=str(config.state_dir)))
        return 1
    except Exception:
        log.exception("tailhook stopped on an unexpected error")
        return 1


def _log_problems(exc: ConfigError, config_path: Path) -> None:
    for problem in exc.problems:
        log.error(str(problem), extra=fields(config=str(config_path)))


def check_config(config_path: Path) -> int:
    config = _load_with_environment(config_path)
    for source in config.sources:
        load_format(source.format)  # compiles the schemas the config uses
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config_path}: valid ({len(config.sources)} sources, {len(config.webhooks)} webhooks)")
    return 0


def _find_webhook(config: Config, name: str) -> int:
    for index, hook in enumerate(config.webhooks):
        if hook.name == name:
            return index
    raise ConfigError([Problem("webhooks", f"no webhook is named {name!r}")])


def test_webhook(config_path: Path, name: str) -> int:
    from agent.demo import test_notifications

    config = load_config(config_path)
    hook = config.webhooks[_find_webhook(config, name)]
    body = test_notifications(config, hook)
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


def dead_letter_list(
    config_path: Path, webhook: str | None, as_json: bool = False, show: str | None = None
) -> int:
    """List the dead-lettered batches of one configured webhook, or of each: a line per
    batch, or (``as_json``) each batch as stored, one JSON object a line; ``show``: only
    the batch with that id, with its answer and its events (exit 1 if there is none).
    A torn or invalid line is reported on stderr and skipped. When there is nothing to
    list, it says so: on stdout, or with ``as_json`` on stderr (stdout stays JSON)."""
    config = load_config(config_path)
    if webhook:
        _find_webhook(config, webhook)
    names = [webhook] if webhook else [hook.name for hook in config.webhooks]
    listed = 0
    for name in names:
        letters = read_dead_letters(config.state_dir, name)
        for problem in letters.problems:
            print(f"{letters.path}: {problem}", file=sys.stderr)
        for _, entry in letters.entries:
            if show is None or entry.get("webhook_id") == show:
                listed += 1
                _print_letter(entry, as_json=as_json, whole=show is not None)
    if listed:
        return 0
    if show is not None:
        where = f"for {webhook}" if webhook else "for any webhook"
        print(f"tailhook: no dead-lettered batch {show} {where}", file=sys.stderr)
        return 1
    print(
        f"no dead-lettered batches for {webhook or 'any webhook'}",
        file=sys.stderr if as_json else sys.stdout,
    )
    return 0


def _print_letter(entry: dict[str, Any], *, as_json: bool, whole: bool) -> None:
    """One dead-lettered batch: as stored (``as_json``), a summary line, and with
    ``whole`` its answer (a quoted JSON string: it is what a receiver sent) and events."""
    if as_json:
        sys.stdout.buffer.write(json_line(entry))  # stdout holds nothing else
        return
    events = entry["events"]
    print(
        f"{entry.get('time')}  {entry.get('webhook')}  {entry.get('webhook_id')}  "
        f"{entry.get('reason')}  status={entry.get('status')}  events={len(events)}"
    )
    if not whole:
        return
    response = entry.get("response")
    print(f"response: {quoted(response) if isinstance(response, str) else response}")
    print(f"events ({len(events)}, one JSON object a line):")
    sys.stdout.flush()
    for event in events:
        sys.stdout.buffer.write(json_line(event))
    sys.stdout.buffer.flush()


def dead_letter_replay(config_path: Path, webhook: str) -> int:
    """Queue the webhook's dead-lettered batches for delivery again, for it alone.

    The events go into the spool as new batches (new ``webhook-id``s): through the
    running agent if there is one (``agent.replay``), else directly, for the agent's
    next start. The dead-letter file is kept, renamed ``WEBHOOK.replayed-TIME.jsonl``.
    """
    config = load_config(config_path)
    hook = config.webhooks[_find_webhook(config, webhook)]
    if not hook.enabled:
        raise ConfigError([Problem("webhooks", f"webhook {webhook!r} is disabled")])
    check_state_dir(config.state_dir)

    def open_spool() -> Spool:
        spool_config = config.spool
        metrics = Metrics(CollectorRegistry())
        path = config.state_dir / "spool.db"
        return Spool(path, metrics, spool_config.max_bytes, spool_config.when_full)

    outcome = replay(config.state_dir, webhook, open_spool)
    letters = dead_letter_path(config.state_dir, webhook)
    for problem in outcome.skipped:
        print(f"{letters}: {problem}", file=sys.stderr)
    if outcome.kept_as is None:
        print(f"{webhook}: no dead-lettered batches")
        return 0
    print(
        f"{webhook}: queued {outcome.events} events from {outcome.batches} batches again; "
        f"the dead letters are kept in {outcome.kept_as}"
    )
    return 0
