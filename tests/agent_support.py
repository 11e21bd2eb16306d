"""Building configs and running the in-process agent for tests."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from agent.config import (
    BatchConfig,
    Config,
    FileSourceConfig,
    MetricsConfig,
    RetryConfig,
    SourceConfig,
    SpoolConfig,
    WebhookConfig,
)
from agent.service import Agent

ALL = frozenset({"hit", "vulnerability", "system", "scope"})

#: How long to go on watching for what must not happen (a line read twice, a batch sent
#: again), once the agent has shown it caught up (``caught_up``): longer than the file
#: source's one-second rescan, the latest a file wrongly taken for a new one is read.
#: Only an absence needs it; anything that must happen is waited for on its condition.
SETTLE_SECONDS = 1.5


def hit_line(n: int) -> bytes:
    """A valid native hit line whose payload carries ``n``."""
    return orjson.dumps(
        {
            "event": "hit",
            "time": 1591261367 + n,
            "logged_at": 1591261381 + n,
            "ids": [f"hit-{n}"],
            "domain": "example.com",
            "method": "GET",
            "path": "/",
            "point": ["get", "id"],
            "payloads": [f"'or {n}={n}--"],
            "attack_type": "sqli",
            "block_status": "monitored",
            "client": {
                "addr": "111.17.1.1",
                "port": 41616,
                "country": None,
                "datacenter": "unknown",
                "tor": "none",
            },
            "response": {"status": 404, "length": 345, "time_ms": 257},
            "detection": {
                "anomality": 0.98,
                "heur_distance": 36.2,
                "probability": 36.1,
                "stamps": [1173],
                "regex": [],
            },
        }
    )


def received_ids(bodies: list[object]) -> list[str]:
    """The ``hit-N`` ids of every hit notification in the received bodies, in order."""
    ids: list[str] = []
    for body in bodies:
        assert isinstance(body, list)
        ids.extend(obj["id"][0] for obj in body if obj["object_type"] == "hit")
    return ids


def file_config(
    tmp_path: Path,
    url: str,
    paths: tuple[str, ...],
    **source_settings: object,
) -> Config:
    source = FileSourceConfig(name="waf", paths=paths, **source_settings)  # type: ignore[arg-type]
    return agent_config(tmp_path, url, source)


def agent_config(
    tmp_path: Path, url: str, source: SourceConfig, spool: SpoolConfig | None = None
) -> Config:
    """One source and one webhook "soc" taking every type, with quick batches and retries."""
    return Config(
        state_dir=tmp_path / "state",
        metrics=MetricsConfig(host="127.0.0.1", port=0),
        sources=(source,),
        spool=spool or SpoolConfig(),
        webhooks=(
            WebhookConfig(
                name="soc",
                url=url,
                events=ALL,
                batch=BatchConfig(max_wait=0.05),
                retry=RetryConfig(initial_backoff=0.05, max_backoff=0.5),
            ),
        ),
        shutdown_timeout=2.0,
    )


@contextmanager
def running_agent(config: Config) -> Iterator[Agent]:
    agent = Agent(config, CollectorRegistry())
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def file_key(path: Path) -> str:
    """The identity the file source checkpoints a file by (device and inode)."""
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def committed_offsets(state_dir: Path, source: str = "waf") -> dict[str, int]:
    """The file offsets the agent has committed for ``source``, by file identity, read
    through a read-only SQLite connection (so also for an agent in another process)."""
    uri = f"file:{state_dir / 'spool.db'}?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT key, offset FROM checkpoints WHERE source = ? AND key != '*'", (source,)
        ).fetchall()
    finally:
        db.close()
    return dict(rows)


def committed_to_the_end(state_dir: Path, *paths: Path) -> bool:
    """Every byte of each file is read and committed: its checkpoint is at its size."""
    offsets = committed_offsets(state_dir)
    return all(offsets.get(file_key(path)) == path.stat().st_size for path in paths)


def drained(state_dir: Path) -> bool:
    """The spool holds no event and no batch in flight: every webhook has passed every
    segment (read-only, so also for an agent in another process)."""
    uri = f"file:{state_dir / 'spool.db'}?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        (held,) = db.execute(
            "SELECT (SELECT count(*) FROM segments) + (SELECT count(*) FROM batches)"
        ).fetchone()
    finally:
        db.close()
    return bool(held == 0)


def process_caught_up(state_dir: Path, *paths: Path) -> bool:
    """``caught_up`` for an agent in another process, read from its spool."""
    return committed_to_the_end(state_dir, *paths) and drained(state_dir)


def caught_up(agent: Agent, *paths: Path) -> bool:
    """The in-process agent has committed every byte of each file and every webhook has
    nothing left to send: from here on nothing more arrives unless something is wrong."""
    spool = agent.spool
    assert spool is not None
    return committed_to_the_end(agent.config.state_dir, *paths) and all(
        spool.backlog(sink.name) == 0 and spool.open_batch(sink.name) is None
        for sink in agent.sinks
    )


def bytes_read(agent: Agent, source: str = "waf") -> float:
    """``tailhook_source_bytes_total``: the bytes the source has read and committed."""
    return agent.registry.get_sample_value("tailhook_source_bytes_total", {"source": source}) or 0


def wait_bytes_read(agent: Agent, count: int, source: str = "waf", timeout: float = 5.0) -> bool:
    """Wait until the source has read and committed ``count`` bytes in this run (the bytes
    of a partial line included): a piece of a line written now is surely read apart."""
    return wait_until(lambda: bytes_read(agent, source) == count, timeout)
