"""The unix_socket source inside the real agent, over real AF_UNIX sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import (
    Config,
    SocketSourceConfig,
    SpoolConfig,
)
from agent.errors import ConfigError
from agent.service import Agent
from tests.agent_support import (
    agent_config,
    hit_line,
    received_ids,
    running_agent,
    wait_bytes_read,
    wait_until,
)
from tests.support.receiver import Receiver

BOM = b"\xef\xbb\xbf"
#: A writer held back by a full spool stays held this much longer (two idle_timeouts of
#: its test): what it waits out is an idle close that must not come.
HELD_BACK_LONGER = 1.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="th-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def socket_config(
    tmp_path: Path,
    url: str,
    path: Path,
    spool: SpoolConfig | None = None,
    **source_settings: object,
) -> Config:
    source = SocketSourceConfig(name="sock", path=str(path), **source_settings)  # type: ignore[arg-type]
    return agent_config(tmp_path, url, source, spool)


def connect(path: Path, timeout: float = 5.0) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    client.connect(str(path))
    return client


def metric(agent: Agent, name: str, **labels: str) -> float:
    return agent.registry.get_sample_value(name, labels) or 0.0


def ids_received(receiver: Receiver, count: int, timeout: float = 5.0) -> bool:
    return receiver.wait_for(
        lambda reqs: len(received_ids([r.json() for r in reqs])) >= count, timeout
    )


def test_concurrent_writers_each_line_arrives_once_and_whole(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    writers, per_writer = 20, 50

    def write(writer: int) -> None:
        with connect(path) as client:
            for k in range(per_writer):
                line = hit_line(writer * 1000 + k) + b"\n"
                if k % 5 == 0:  # in three sends, with pauses between them
                    for piece in (line[:17], line[17:200], line[200:]):
                        client.sendall(piece)
                        time.sleep(0.002)
                else:
                    client.sendall(line)

    with running_agent(socket_config(tmp_path, receiver.url, path)) as agent:
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert ids_received(receiver, writers * per_writer, timeout=10)
        assert metric(agent, "tailhook_source_lines_total", source="sock") == writers * per_writer
    ids = received_ids(receiver.bodies_json())
    expected = {f"hit-{w * 1000 + k}" for w in range(writers) for k in range(per_writer)}
    assert len(ids) == len(expected) and set(ids) == expected
    for writer in range(writers):  # each writer's lines in the order it wrote them
        mine = [i for i in ids if int(i.removeprefix("hit-")) // 1000 == writer]
        assert mine == sorted(mine, key=lambda i: int(i.removeprefix("hit-")))


def test_a_client_leaving_mid_line_loses_only_that_fragment(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    with running_agent(socket_config(tmp_path, receiver.url, path)) as agent:
        with connect(path) as client:
            client.sendall(hit_line(0) + b"\n" + hit_line(1) + b"\n" + hit_line(2)[:50])
        assert ids_received(receiver, 2)
        assert wait_until(
            lambda: metric(agent, "tailhook_socket_fragments_dropped_total", source="sock") == 1, 5
        )
        with connect(path) as client:  # the next client starts clean
            client.sendall(hit_line(3) + b"\n")
        assert ids_received(receiver, 3)
        # Its leaving handled (which is when a fragment would be counted):
        assert wait_until(
            lambda: metric(agent, "tailhook_socket_connections", source="sock") == 0, 5
        )
        assert metric(agent, "tailhook_socket_fragments_dropped_total", source="sock") == 1
        invalid = metric(
            agent,
            "tailhook_events_total",
            source="sock",
            event_type="unknown",
            outcome="invalid_json",
        )
        assert invalid == 0
    assert received_ids(receiver.bodies_json()) == ["hit-0", "hit-1", "hit-3"]


def test_datagrams_carry_one_or_more_lines_trailing_newline_optional(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "d.sock"
    datagrams = [
        hit_line(0) + b"\n",
        hit_line(1),
        hit_line(2) + b"\n" + hit_line(3) + b"\n" + hit_line(4) + b"\n",
        hit_line(5) + b"\r\n" + hit_line(6),
        BOM + hit_line(7),
    ]
    with running_agent(socket_config(tmp_path, receiver.url, path, mode="datagram")) as agent:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            for datagram in datagrams:
                client.sendto(datagram, str(path))
        assert ids_received(receiver, 8)
        accepted = metric(
            agent, "tailhook_events_total", source="sock", event_type="hit", outcome="accepted"
        )
        assert accepted == 8
    assert sorted(received_ids(receiver.bodies_json())) == [f"hit-{n}" for n in range(8)]
    assert not path.exists()


def test_socket_mode_is_applied_and_a_missing_directory_is_created(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "run" / "s.sock"
    old_umask = os.umask(0o077)  # the configured mode wins over the umask
    try:
        config = socket_config(tmp_path, receiver.url, path, socket_mode=0o660)
        with running_agent(config):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750
        # On stop the socket file goes; the directory stays.
        assert not path.exists() and path.parent.is_dir()
        with running_agent(socket_config(tmp_path, receiver.url, path, socket_mode=0o600)):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_a_stale_socket_file_is_replaced(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: as after a crash
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with running_agent(socket_config(tmp_path, receiver.url, path)):
        with connect(path) as client:
            client.sendall(hit_line(1) + b"\n")
        assert ids_received(receiver, 1)


def start_refused(config: Config) -> ConfigError:
    agent = Agent(config, CollectorRegistry())
    try:
        with pytest.raises(ConfigError) as refused:
            agent.start()
    finally:
        agent.stop()
    return refused.value


def test_a_regular_file_or_directory_at_the_path_is_never_clobbered(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    path.write_bytes(b"precious\n")
    error = start_refused(socket_config(tmp_path, receiver.url, path))
    assert [str(p) for p in error.problems] == [
        f"sources[0].path: {path} is a regular file; refusing to replace it"
    ]
    assert path.read_bytes() == b"precious\n"
    path.unlink()
    path.mkdir()
    error = start_refused(socket_config(tmp_path, receiver.url, path))
    assert "is a directory; refusing to replace it" in str(error)
    assert path.is_dir()


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_a_socket_another_process_listens_on_is_not_stolen(
    tmp_path: Path, short_dir: Path, receiver: Receiver, kind: int
) -> None:
    path = short_dir / "s.sock"
    with socket.socket(socket.AF_UNIX, kind) as owner:
        owner.bind(str(path))
        if kind == socket.SOCK_STREAM:
            owner.listen(1)
        before = os.stat(path).st_ino
        error = start_refused(socket_config(tmp_path, receiver.url, path))
        assert str(error) == f"sources[0].path: another process is listening on {path}"
        assert os.stat(path).st_ino == before
        with socket.socket(socket.AF_UNIX, kind) as client:
            client.connect(str(path))  # still the owner's


def test_connections_beyond_max_connections_are_closed_at_once_and_counted(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    with running_agent(socket_config(tmp_path, receiver.url, path, max_connections=2)) as agent:
        first, second = connect(path), connect(path)
        try:
            assert wait_until(
                lambda: metric(agent, "tailhook_socket_connections", source="sock") == 2, 5
            )
            with connect(path) as third, contextlib.suppress(ConnectionResetError):
                assert third.recv(1) == b""  # closed by the agent, not left waiting
            assert wait_until(
                lambda: (
                    metric(agent, "tailhook_socket_connections_refused_total", source="sock") == 1
                ),
                5,
            )
            first.sendall(hit_line(1) + b"\n")
            second.sendall(hit_line(2) + b"\n")
            assert ids_received(receiver, 2)
        finally:
            first.close()
            second.close()
        assert wait_until(
            lambda: metric(agent, "tailhook_socket_connections", source="sock") == 0, 5
        )
        with connect(path) as again:  # room again once they left
            again.sendall(hit_line(3) + b"\n")
        assert ids_received(receiver, 3)
    assert sorted(received_ids(receiver.bodies_json())) == ["hit-1", "hit-2", "hit-3"]


def test_an_unterminated_over_long_line_is_rejected_without_being_held(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    size = 4 * 1024 * 1024
    config = socket_config(tmp_path, receiver.url, path, max_line_bytes=64 * 1024)
    with running_agent(config) as agent:
        tracemalloc.start()
        try:
            with connect(path) as client:
                chunk = b"x" * 65536
                for _ in range(size // len(chunk)):
                    client.sendall(chunk)
                assert wait_until(
                    lambda: metric(agent, "tailhook_source_bytes_total", source="sock") >= size, 5
                )
                _, peak = tracemalloc.get_traced_memory()
                client.sendall(b"\n" + hit_line(1) + b"\n")
                assert ids_received(receiver, 1)
        finally:
            tracemalloc.stop()
        assert peak < size // 2, f"{peak} bytes were held while reading a {size}-byte line"
        too_long = metric(
            agent,
            "tailhook_events_total",
            source="sock",
            event_type="unknown",
            outcome="line_too_long",
        )
        assert too_long == 1
    rejected = (tmp_path / "state" / "rejected" / "sock.jsonl").read_text()
    assert f"{size}" in rejected
    assert received_ids(receiver.bodies_json()) == ["hit-1"]


def test_a_bom_at_the_start_of_each_connection_is_skipped(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    with running_agent(socket_config(tmp_path, receiver.url, path)) as agent:
        sent = 0
        for n in range(2):
            with connect(path) as client:
                client.sendall(BOM[:2])
                sent += 2
                assert wait_bytes_read(agent, sent, "sock")  # the BOM's head read apart
                rest = BOM[2:] + hit_line(n) + b"\n"
                client.sendall(rest)
                sent += len(rest)
            assert ids_received(receiver, n + 1)
        rejected = sum(
            metric(agent, "tailhook_events_total", source="sock", event_type="unknown", outcome=o)
            for o in ("invalid_json", "invalid_encoding")
        )
        assert rejected == 0
    assert received_ids(receiver.bodies_json()) == ["hit-0", "hit-1"]


def test_a_full_spool_with_block_makes_stream_writers_wait_and_loses_nothing(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    spool = SpoolConfig(max_bytes=2 * 1024 * 1024, when_full="block")
    receiver.answer_with(503)
    data = b"".join(hit_line(n) + b"\n" for n in range(8000))  # ~4 MB, far past any buffer
    with running_agent(socket_config(tmp_path, receiver.url, path, spool=spool)) as agent:
        client = connect(path, timeout=1.0)
        try:
            sent, blocked = 0, False
            while sent < len(data):
                try:
                    sent += client.send(data[sent : sent + 65536])
                except TimeoutError:
                    blocked = True
                    break
            assert blocked, "the writer was never held back"
            assert agent.spool is not None
            budget = agent.spool.budget
            assert agent.spool.held_bytes <= budget.database_pages * budget.page_size
            receiver.answer_with(200)
            # Finish the line the writer was in the middle of, then go.
            end = data.index(b"\n", sent) + 1 if sent else 0
            client.settimeout(10)
            client.sendall(data[sent:end])
        finally:
            client.close()
        written = data[:end].count(b"\n")
        assert 0 < written < 8000
        everything = {f"hit-{n}" for n in range(written)}
        assert wait_until(lambda: set(received_ids(receiver.bodies_json())) >= everything, 15)
        assert metric(agent, "tailhook_spool_dropped_events_total") == 0
        assert metric(agent, "tailhook_socket_fragments_dropped_total", source="sock") == 0


def test_stopping_while_a_writer_waits_on_a_full_spool_is_prompt(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    spool = SpoolConfig(max_bytes=2 * 1024 * 1024, when_full="block")
    receiver.answer_with(503)
    agent = Agent(socket_config(tmp_path, receiver.url, path, spool=spool), CollectorRegistry())
    agent.start()
    try:
        with connect(path, timeout=1.0) as client:
            with pytest.raises(TimeoutError):
                for n in range(8000):
                    client.sendall(hit_line(n) + b"\n")
            started = time.monotonic()
            agent.stop()
            assert time.monotonic() - started < agent.config.shutdown_timeout + 3
            assert not agent.sources[0].is_alive()
    finally:
        agent.stop()
    assert not path.exists()


def test_datagram_lines_too_long_and_datagrams_too_big(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "d.sock"
    config = socket_config(tmp_path, receiver.url, path, mode="datagram", max_line_bytes=1024)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with running_agent(config) as agent, client:
        client.sendto(b"x" * 2000 + b"\n" + hit_line(0), str(path))
        assert ids_received(receiver, 1)
        too_long = metric(
            agent,
            "tailhook_events_total",
            source="sock",
            event_type="unknown",
            outcome="line_too_long",
        )
        assert too_long == 1
        # Bigger than the receive buffer (256 KiB): the lines that fit are kept, the
        # line cut in two is counted as a lost fragment, what follows it is lost.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)
        big = b"".join(hit_line(n) + b"\n" for n in range(1, 700))
        assert len(big) > 256 * 1024
        try:
            client.sendto(big, str(path))
        except OSError as exc:  # the host caps a datagram's size lower (wmem_max)
            pytest.skip(f"cannot send a {len(big)}-byte datagram here: {exc}")
        kept = big[: 256 * 1024].count(b"\n")
        assert ids_received(receiver, 1 + kept)
        assert wait_until(
            lambda: metric(agent, "tailhook_socket_fragments_dropped_total", source="sock") == 1,
            5,
        )
    assert received_ids(receiver.bodies_json()) == [f"hit-{n}" for n in range(kept + 1)]


# --- idle clients ------------------------------------------------------------------------


def test_idle_clients_are_closed_after_idle_timeout_so_a_new_writer_gets_in(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    config = socket_config(tmp_path, receiver.url, path, max_connections=2, idle_timeout=2.0)
    with running_agent(config) as agent:
        errors = agent.registry.get_sample_value  # exported at 0 from the start
        assert errors("tailhook_source_errors_total", {"source": "sock", "reason": "io"}) == 0
        connected = time.monotonic()
        idle = [connect(path), connect(path)]
        try:
            idle[1].sendall(hit_line(0)[:40])  # a fragment it never finishes
            assert wait_until(
                lambda: metric(agent, "tailhook_socket_connections", source="sock") == 2, 5
            )
            with connect(path) as refused, contextlib.suppress(ConnectionResetError):
                assert refused.recv(1) == b""  # every slot is held
            assert time.monotonic() - connected < 2.0, "too slow to see the slots held"
            for client in idle:  # closed by the agent: an end of stream, not a timeout
                assert client.recv(1) == b""
            assert time.monotonic() - connected >= 2.0
            assert (
                metric(agent, "tailhook_socket_connections_idle_closed_total", source="sock") == 2
            )
            assert metric(agent, "tailhook_socket_fragments_dropped_total", source="sock") == 1
            assert wait_until(
                lambda: metric(agent, "tailhook_socket_connections", source="sock") == 0, 5
            )
            with connect(path) as writer:
                writer.sendall(hit_line(1) + b"\n")
            assert ids_received(receiver, 1)
        finally:
            for client in idle:
                client.close()
    assert received_ids(receiver.bodies_json()) == ["hit-1"]


def test_a_slow_but_steady_writer_is_not_idle(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    path = short_dir / "s.sock"
    config = socket_config(tmp_path, receiver.url, path, idle_timeout=1.0)
    line = hit_line(7) + b"\n"
    pieces = [line[i : i + 60] for i in range(0, len(line), 60)]
    with running_agent(config) as agent, connect(path) as client:
        started = time.monotonic()
        for piece in pieces:  # a piece every 0.3 s, for longer than idle_timeout in all
            client.sendall(piece)
            time.sleep(0.3)
        assert time.monotonic() - started > 2.0
        assert ids_received(receiver, 1)
        assert metric(agent, "tailhook_socket_connections_idle_closed_total", source="sock") == 0
        assert metric(agent, "tailhook_socket_connections", source="sock") == 1
    assert received_ids(receiver.bodies_json()) == ["hit-7"]


def test_a_writer_held_back_by_a_full_spool_is_not_idle(
    tmp_path: Path, short_dir: Path, receiver: Receiver
) -> None:
    """While the spool is full nothing is read; the writer blocked in send() has bytes
    waiting, so it is not closed however long that lasts."""
    path = short_dir / "s.sock"
    spool = SpoolConfig(max_bytes=20_000, when_full="block")
    receiver.answer_with(503)
    data = b"".join(hit_line(n) + b"\n" for n in range(5000))
    config = socket_config(tmp_path, receiver.url, path, spool=spool, idle_timeout=0.5)
    with running_agent(config) as agent:
        client = connect(path, timeout=1.0)
        try:
            sent = 0
            with pytest.raises(TimeoutError):  # held back for a second: twice idle_timeout
                while sent < len(data):
                    sent += client.send(data[sent : sent + 65536])
            time.sleep(HELD_BACK_LONGER)  # not closed however long it is held back
            receiver.answer_with(200)
            end = data.index(b"\n", sent) + 1
            client.settimeout(10)
            client.sendall(data[sent:end])
        finally:
            client.close()
        written = data[:end].count(b"\n")
        everything = {f"hit-{n}" for n in range(written)}
        assert wait_until(lambda: set(received_ids(receiver.bodies_json())) >= everything, 15)
        assert metric(agent, "tailhook_socket_connections_idle_closed_total", source="sock") == 0
        assert metric(agent, "tailhook_socket_fragments_dropped_total", source="sock") == 0
