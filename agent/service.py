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
from types import FrameType

from prometheus_client import CollectorRegistry

from agent import __version__
from agent.config import Config, FileSourceConfig, SocketSourceConfig
from agent.errors import ConfigError, Problem, SourceError, StateError
from agent.formats import MappingContext, load_format
from agent.httpd import MetricsServer
from agent.notify import Notifier, StatusLine, Watchdog
from agent.pipeline import LineProcessor
from agent.pipeline.rejected import RejectedLog
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
        self.spool.configure_webhooks({hook.name: hook.events for hook in enabled})
        for hook in enabled:
            sink = WebhookSink(hook, self.spool, self.metrics, config.state_dir)
            self.sinks.append(sink)
            sink.start()
        ctx = MappingContext(console_url=config.console_url)
        for index, source_config in enumerate(config.sources):
            processor = LineProcessor(
                source_config.name,
                load_format(source_config.format),
                ctx,
                self.metrics,
                RejectedLog(config.state_dir, source_config.name),
            )
            source = self._build_source(source_config, processor)
            try:
                source.start()
            except SourceError as exc:  # the path the config names cannot be used
                raise ConfigError([Problem(f"sources[{index}].path", str(exc))]) from exc
            self.sources.append(source)
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
                metrics=f"http://{config.metrics.host}:{self.server.port}/metrics",
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
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                problem = f"{address} is in use"
            else:
                problem = f"cannot listen on {address}: {exc.strerror or exc}"
            raise ConfigError([Problem("metrics.listen", problem)]) from exc

    def _build_source(
        self, source_config: FileSourceConfig | SocketSourceConfig, processor: LineProcessor
    ) -> Source:
        assert self.spool is not None
        if isinstance(source_config, FileSourceConfig):
            return FileSource(
                source_config, self.spool, processor, self.metrics, self.config.state_dir
            )
        return UnixSocketSource(source_config, self.spool, processor, self.metrics)

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

    def run_until_signalled(self) -> int:
        """Run until SIGTERM or SIGINT, then stop cleanly. Returns the exit status."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("Signal received", extra=fields(signal=signal.Signals(signum).name))
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        # systemd: READY=1 once started, WATCHDOG=1 while healthy, STOPPING=1 (agent.notify)
        self.notifier = Notifier.from_environment()
        watchdog = Watchdog(self.notifier, self.healthy, StatusLine(self.metrics).text)
        try:
            self.start()
            self.notifier.ready(f"running: {len(self.sources)} sources, {len(self.sinks)} webhooks")
            watchdog.start()
            while not stop.wait(1.0):
                pass
        finally:
            watchdog.stop()  # systemd watches no more once STOPPING=1 came
            self.notifier.stopping(
                "stopping: sending what can be sent",
                extend_timeout=self.config.shutdown_timeout + STOP_MARGIN,
            )
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0
