"""Wiring: config -> state dir -> spool -> sinks -> sources -> metrics; signals; shutdown.

The state dir comes first: it is checked (``agent.statedir``) and its lock taken for the
life of the agent, so a second agent on it exits at once naming this one; only the lock
holder writes the spool, and a ``dead-letter replay`` asks it through
``state_dir/requests`` (``agent.replay``), answered from the once-a-second gauge loop.

``Agent`` owns the threads. Start order puts the spool and the sinks before the sources,
so nothing is read before it can be kept. Stop order is the reverse: sources stop reading
first, then the sinks get ``shutdown_timeout`` to send what they can; whatever is left
stays in the spool for the next start.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from agent import __version__
from agent.config import Config, FileSourceConfig, SourceConfig, WebhookConfig, load_config
from agent.errors import ConfigError, Problem, SourceError, StateError
from agent.formats import MappingContext, load_format
from agent.httpd import MetricsServer
from agent.notify import Notifier, StatusLine, Watchdog
from agent.pipeline import LineProcessor
from agent.pipeline.rejected import RejectedLog
from agent.pipeline.routing import routes_of
from agent.plan import BROKEN, Announcement, Plan, announced_to, plan_reload
from agent.reload import ConfigWatcher, Reloader, announcement_segment
from agent.replay import answer_requests
from agent.sinks.webhook import WebhookSink
from agent.sources import Source
from agent.sources.file import FileSource
from agent.sources.unix_socket import UnixSocketSource
from agent.spool import Spool
from agent.statedir import StateDirLock, check_state_dir
from agent.telemetry import Metrics, fields
from agent.worker import loop_problems

log = logging.getLogger(__name__)

GAUGE_INTERVAL = 1.0
#: How long a reload waits for a stopped loop (a webhook's request is cut at once).
JOIN_SECONDS = 10.0
#: What stopping may take beyond ``shutdown_timeout``: sources ending, the spool closing.
STOP_MARGIN = 20.0


class Agent:
    """One running tailhook: its spool, sources, sinks and metrics listener."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.spool: Spool | None = None
        self.sources: list[Source] = []
        self.sinks: list[WebhookSink] = []
        self.server: MetricsServer | None = None
        self.lock: StateDirLock | None = None
        self._requests_refused = False
        self._stop = threading.Event()
        self._ready = False
        self.notifier = Notifier(None)  # systemd's, once ``run_until_signalled`` runs
        self._gauges = threading.Thread(target=self._update_gauges, name="gauges", daemon=True)

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        config = self.config
        # The state_dir first: a second agent on it must say so, whatever else it shares.
        check_state_dir(config.state_dir)
        self.lock = StateDirLock.acquire(config.state_dir)
        self.server = self._listen_for_metrics()
        self.server.start()
        self.spool = Spool(
            config.state_dir / "spool.db",
            self.metrics,
            config.spool.max_bytes,
            config.spool.when_full,
        )
        enabled = [hook for hook in config.webhooks if hook.enabled]
        self.spool.configure_webhooks(routes_of(config))
        for hook in enabled:
            self._start_sink(hook)
        for source_config in config.sources:
            self._start_source(source_config)
        for source in self.sources:
            source.started.wait(10)
        self._gauges.start()
        self._ready = True
        log.info(
            "tailhook is running",
            extra=fields(
                version=__version__,
                sources=len(self.sources),
                webhooks=len(self.sinks),
                metrics=f"http://{_address(config.metrics.host, self.server.port)}/metrics",
            ),
        )

    def _listen_for_metrics(self) -> MetricsServer:
        """The metrics listener, bound; an address that cannot be used is a ``ConfigError``
        at ``metrics.listen`` (exit 2)."""
        host, port = self.config.metrics.host, self.config.metrics.port
        try:
            return MetricsServer(
                host,
                port,
                self.registry,
                self.healthy,
                self.ready,
                self.metrics.metrics_connections_refused,
            )
        except OSError as exc:
            address = _address(host, port)
            if exc.errno == errno.EADDRINUSE:
                problem = f"{address} is in use"
            else:
                problem = f"cannot listen on {address}: {exc.strerror or exc}"
            raise ConfigError([Problem("metrics.listen", problem)]) from exc

    def _start_sink(self, hook: WebhookConfig) -> None:
        assert self.spool is not None
        self.metrics.declare_webhook(hook.name, hook.events)
        sink = WebhookSink(
            hook, self.spool, self.metrics, self.config.state_dir, on_broken=self._broken
        )
        self.sinks = [*self.sinks, sink]
        sink.start()

    def _start_source(self, source_config: SourceConfig) -> None:
        """Build and start one source; a path it cannot use is a ``ConfigError`` at
        ``sources[N].path``."""
        assert self.spool is not None
        spool, config = self.spool, self.config
        tails_files = isinstance(source_config, FileSourceConfig)
        self.metrics.declare_source(source_config.name, tails_files)
        processor = LineProcessor(
            source_config.name,
            load_format(source_config.format),
            MappingContext(console_url=config.console_url),
            self.metrics,
            RejectedLog(config.state_dir, source_config.name),
            filtering=lambda: spool.filtering,
        )
        source: Source
        if isinstance(source_config, FileSourceConfig):
            source = FileSource(
                source_config, self.spool, processor, self.metrics, config.state_dir
            )
        else:
            source = UnixSocketSource(source_config, self.spool, processor, self.metrics)
        try:
            source.start()
        except SourceError as exc:  # the path the config names cannot be used
            index = next(i for i, s in enumerate(config.sources) if s.name == source_config.name)
            raise ConfigError([Problem(f"sources[{index}].path", str(exc))]) from exc
        self.sources = [*self.sources, source]

    # -- reload -----------------------------------------------------------------------

    def apply(self, new: Config) -> Plan:
        """Take the running agent from its config to ``new`` (see ``agent.plan``).

        Sources stop first and sinks next, then the spool learns the webhooks (a removed
        one's backlog goes, counted), announcements are kept, and the new sinks and
        sources start. A source that cannot start (its socket path is taken) raises
        ``ConfigError``; the others are running by then.
        """
        assert self.spool is not None
        plan = plan_reload(self.config, new)
        for name in plan.kept_until_restart:
            log.warning(
                "This setting changes only at a restart; the running value stays",
                extra=fields(setting=name),
            )
        self._stop_workers(plan)
        self.config = plan.config
        self.spool.when_full = plan.config.spool.when_full
        enabled = routes_of(plan.config)  # filters, forms and identity as the new config says
        for name, pending in self.spool.configure_webhooks(enabled).items():
            reason = "deleted" if name not in {h.name for h in plan.config.webhooks} else "disabled"
            self.metrics.discarded.labels(webhook=name, reason=reason).inc(pending)
            log.warning(
                "A webhook was removed or disabled; its undelivered events are dropped",
                extra=fields(webhook=name, reason=reason, events=pending),
            )
        self._forget_gauges(plan, set(enabled))
        for announcement in plan.announcements:
            self._announce(announcement)
        for hook in plan.start_sinks:
            self._start_sink(hook)
        for source_config in plan.start_sources:
            self._start_source(source_config)
        for source in self.sources:
            source.started.wait(10)
        return plan

    def _forget_gauges(self, plan: Plan, enabled: set[str]) -> None:
        """Drop the gauges of stopped webhooks and sources that do not come back, once
        the spool no longer counts them (its gauge loop would set them again)."""
        for name in plan.stop_sinks:
            if name not in enabled:
                self.metrics.forget_webhook(name)
        sources = {source.name for source in plan.config.sources}
        for name in plan.stop_sources:
            if name not in sources:
                self.metrics.forget_source(name)

    def _stop_workers(self, plan: Plan) -> None:
        sources = [s for s in self.sources if s.name in plan.stop_sources]
        sinks = [s for s in self.sinks if s.name in plan.stop_sinks]
        for source in sources:
            source.stop()
        for sink in sinks:
            sink.stop_now()
        workers: list[Source | WebhookSink] = [*sources, *sinks]
        for worker in workers:
            worker.join(JOIN_SECONDS)
            if worker.is_alive():
                log.error(
                    "A loop did not stop in time; its replacement starts beside it",
                    extra=fields(name=worker.name),
                )
        self.sources = [s for s in self.sources if s not in sources]
        self.sinks = [s for s in self.sinks if s not in sinks]

    def _announce(self, announcement: Announcement) -> None:
        """Keep the announcement for every other webhook taking ``system`` events."""
        assert self.spool is not None
        targets = announced_to(self.config, announcement)
        if not targets:
            return
        segment = announcement_segment(announcement, self.config.console_url)
        self.spool.announce(segment, targets)
        log.info(
            "Announced a webhook's lifecycle to the other webhooks",
            extra=fields(
                action=announcement.action, webhook=announcement.webhook, to=list(targets)
            ),
        )

    def _broken(self, webhook: str) -> None:
        """A webhook's batch expired (``retry.max_elapsed``): announce it, once an outage.
        Called in that webhook's thread; a StateError makes it try again."""
        self._announce(Announcement(BROKEN, webhook))

    # -- health -----------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """Every source and sink loop alive and not stuck (``/healthz``, the watchdog)."""
        problems = loop_problems([*self.sources, *self.sinks], time.monotonic())
        if self._ready and problems and not self._stop.is_set():
            return False, "; ".join(problems)
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self._ready:
            return False, "starting"
        if self._stop.is_set():
            return False, "stopping"
        if self.spool is not None and not self.spool.writable:
            return False, f"the spool takes no new events: {self.spool.problem}"
        if not all(source.started.is_set() for source in self.sources):
            return False, "sources starting"
        return self.healthy()

    def _update_gauges(self) -> None:
        """Every second: let the spool see whether it can take new events again (after a
        full disk), answer the replay requests of ``tailhook dead-letter replay`` (only
        this process may write the spool), and refresh the spool and backlog gauges."""
        while not self._stop.wait(GAUGE_INTERVAL):
            if self.spool is None:
                continue
            try:
                self.spool.probe()
                self.spool.update_gauges()
            except Exception:
                log.exception("Updating the backlog gauges failed")
            self._answer_requests()

    def _answer_requests(self) -> None:
        assert self.spool is not None
        try:
            answer_requests(self.config.state_dir, self.spool, [s.name for s in self.sinks])
        except StateError as exc:  # state_dir/requests refused (a link): say so once
            if not self._requests_refused:
                log.error(
                    "Cannot read dead-letter replay requests; replays wait until it is fixed",
                    extra=fields(error=str(exc)),
                )
            self._requests_refused = True
            return
        except Exception:
            log.exception("Answering dead-letter replay requests failed")
            return
        self._requests_refused = False

    # -- stop -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading, send what can be sent within ``shutdown_timeout``, keep the rest."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.lock is None:
            return  # refused at the state_dir: nothing was started
        log.info(
            "Stopping: no more reading; sending what can be sent",
            extra=fields(shutdown_timeout=self.config.shutdown_timeout),
        )
        for source in self.sources:
            source.stop()
        for source in self.sources:
            source.join(5)
        deadline = time.monotonic() + self.config.shutdown_timeout
        for sink in self.sinks:
            sink.stop(deadline=deadline)
        for sink in self.sinks:
            sink.join(max(0.0, deadline - time.monotonic()) + 0.5)
        left = (
            {sink.name: self.spool.backlog(sink.name) for sink in self.sinks} if self.spool else {}
        )
        if self.server is not None:
            self.server.stop()
        if self.spool is not None:
            self.spool.close()
        if self.lock is not None:
            self.lock.release()
        log.info(
            "Stopped; undelivered events are kept for the next start", extra=fields(backlog=left)
        )

    def summary(self) -> str:
        return f"running: {len(self.sources)} sources, {len(self.sinks)} webhooks"

    def run_until_signalled(
        self, config_path: Path | None = None, load: Callable[[Path], Config] = load_config
    ) -> int:
        """Run until SIGTERM or SIGINT, then stop cleanly; reload ``config_path`` (read
        by ``load``) on SIGHUP or when it changes. Returns the exit status."""
        stop, reload, wake = threading.Event(), threading.Event(), threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("Signal received", extra=fields(signal=signal.Signals(signum).name))
            (reload if signum == signal.SIGHUP else stop).set()
            wake.set()

        def on_change() -> None:
            reload.set()
            wake.set()

        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        # systemd: READY=1 once started, WATCHDOG=1 while healthy, STOPPING=1 (agent.notify)
        self.notifier = Notifier.from_environment()
        watchdog = Watchdog(self.notifier, self.healthy, StatusLine(self.metrics).text)
        reloader = Reloader(self, config_path, load) if config_path is not None else None
        watcher = ConfigWatcher(config_path, on_change) if config_path is not None else None
        try:
            self.start()
            self.notifier.ready(self.summary())
            watchdog.start()
            if watcher is not None:
                watcher.start()
            while not stop.is_set():
                wake.wait(1.0)
                wake.clear()
                if reload.is_set() and not stop.is_set():
                    reload.clear()
                    if reloader is None:
                        log.warning("No config file to reload; the running config stays")
                    else:
                        reloader.reload()
        finally:
            if watcher is not None:
                watcher.stop()
            watchdog.stop()  # systemd watches no more once STOPPING=1 came
            self.notifier.stopping(
                "stopping: sending what can be sent",
                extend_timeout=self.config.shutdown_timeout + STOP_MARGIN,
            )
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0


def _address(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets (``[::]:9717``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
