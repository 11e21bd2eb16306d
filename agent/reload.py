"""Reloading the config: noticing a change, loading it, applying it or refusing it.

A reload comes from SIGHUP (``systemctl reload``) or from a change of the config file,
noticed by ``ConfigWatcher``: once a second it looks at the file through its path
(following links), so an editor writing in place, a ``mv`` over it, and a Kubernetes
ConfigMap update (which swaps the ``..data`` symlink of the mounted directory, never
writing the file) are all seen; a change of content, not of timestamps, is what counts.

``Reloader.reload`` loads the file as at start. An invalid config is refused: every
problem is logged at ERROR with its path, ``tailhook_config_last_reload_successful``
goes to 0 and ``tailhook_config_reloads_total{result="failure"}`` counts it, and the
running config stays. A valid one is applied (``Agent.apply``, ``agent.plan``). Under
systemd, ``RELOADING=1`` comes before and ``READY=1`` after, whatever the outcome.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.formats import EventFormat, MappingContext, load_format
from agent.plan import Announcement
from agent.spool import NewSegment
from agent.telemetry import fields, setup_logging

if TYPE_CHECKING:
    from agent.service import Agent

log = logging.getLogger(__name__)

#: How often the config file is looked at.
WATCH_SECONDS = 1.0


@cache
def _native() -> EventFormat:
    return load_format("native")


def announcement_segment(announcement: Announcement, console_url: str) -> NewSegment:
    """The system notification of a webhook's lifecycle, made as a native line would
    be: validated against the system schema and mapped (CONTRACT §4, §6)."""
    line = {
        "event": "system",
        "time": int(time.time()),
        "action": announcement.action,
        "integration": {"name": announcement.webhook, "type": "webhook"},
    }
    event_type, notification = _native().convert(line, MappingContext(console_url=console_url))
    return NewSegment.of([(event_type, orjson.dumps(notification))])


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None  # gone for a moment (a ConfigMap swap): looked at again next time


class ConfigWatcher:
    """Calls ``changed`` when the content of the config file changes."""

    def __init__(self, path: Path, changed: Callable[[], None]) -> None:
        self.path = path
        self._changed = changed
        self._stat = self._look()
        self._digest = _digest(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _look(self) -> tuple[str, int, int, int, int] | None:
        try:
            st = os.stat(self.path)
            return (os.path.realpath(self.path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            seen = self._look()
            if seen is None or seen == self._stat:
                continue
            self._stat = seen
            digest = _digest(self.path)
            if digest is not None and digest != self._digest:
                self._digest = digest
                log.info("The config file changed; reloading", extra=fields(path=str(self.path)))
                self._changed()


class Reloader:
    """Loads the config file again and applies it to the running agent."""

    def __init__(
        self, agent: Agent, path: Path, load: Callable[[Path], Config] = load_config
    ) -> None:
        """``load``: how the file becomes a ``Config``, as at start (with the
        environment's overrides: ``agent.commands.with_environment``)."""
        self.agent = agent
        self.path = path
        self._load = load

    def reload(self) -> bool:
        """Load and apply the config; False (the running one stays) if it is refused."""
        agent = self.agent
        agent.notifier.reloading("reloading the config")
        try:
            ok = self._load_and_apply()
        finally:
            agent.notifier.ready(agent.summary())
        result = "success" if ok else "failure"
        agent.metrics.reloads.labels(result=result).inc()
        agent.metrics.reload_successful.set(1 if ok else 0)
        return ok

    def _load_and_apply(self) -> bool:
        try:
            new = self._load(self.path)
        except ConfigError as exc:
            self._refused(exc, "The new config is invalid; the running one stays")
            return False
        try:
            plan = self.agent.apply(new)
        except ConfigError as exc:
            self._refused(exc, "The new config could not be applied in full")
            return False
        except Exception:
            log.exception("Applying the new config failed; what was applied stays")
            return False
        setup_logging(new.log.level, new.log.format)
        for warning in new.warnings:
            log.warning(warning, extra=fields(config=str(self.path)))
        log.info(
            "The config was reloaded",
            extra=fields(
                config=str(self.path),
                stopped=[*plan.stop_sources, *plan.stop_sinks],
                started=[c.name for c in (*plan.start_sinks, *plan.start_sources)],
                announced=[f"{a.action} {a.webhook}" for a in plan.announcements],
            ),
        )
        return True

    def _refused(self, exc: ConfigError, message: str) -> None:
        for problem in exc.problems:
            log.error(
                message,
                extra=fields(config=str(self.path), path=problem.path, problem=problem.message),
            )
