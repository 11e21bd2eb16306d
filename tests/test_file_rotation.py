"""File identity and rotation, on real files: reused inodes, files replaced under their
name, rename rotation with a writer that keeps appending to the old file, copytruncate,
deletion while open, rotation while the agent is stopped, new files, symlinked paths,
and a half-written line across a SIGKILL.

Every test asserts what a user would check: the ids the receiver got (each line exactly
once, in order within a file), the truncation counter, and which files the agent still
holds open (``/proc/.../fd``).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.agent_support import (
    SETTLE_SECONDS,
    caught_up,
    drained,
    file_config,
    hit_line,
    process_caught_up,
    received_ids,
    running_agent,
    wait_bytes_read,
    wait_until,
)
from tests.support.agent_process import AgentProcess, file_source_yaml
from tests.support.receiver import Receiver

ROTATE_WAIT = 1.0


def lines(numbers: Iterable[int]) -> bytes:
    return b"".join(hit_line(n) + b"\n" for n in numbers)


def ids(numbers: Iterable[int]) -> list[str]:
    return [f"hit-{n}" for n in numbers]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)


def got(receiver: Receiver) -> list[str]:
    return received_ids(receiver.bodies_json())


def wait_for_ids(receiver: Receiver, wanted: Iterable[str], timeout: float = 10.0) -> bool:
    wanted = set(wanted)
    return receiver.wait_for(
        lambda reqs: wanted <= set(received_ids([r.json() for r in reqs])), timeout
    )


def assert_exactly_once(receiver: Receiver, *files: list[str]) -> None:
    """Each id of each file arrived exactly once, each file's ids in the order written,
    and nothing else arrived."""
    received = got(receiver)
    counts = Counter(received)
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    expected = {i for ids_of_file in files for i in ids_of_file}
    assert not duplicated, f"delivered more than once: {duplicated}"
    missing, unexpected = sorted(expected - set(received)), sorted(set(received) - expected)
    assert not missing and not unexpected, f"missing: {missing}; unexpected: {unexpected}"
    for ids_of_file in files:
        order = [i for i in received if i in set(ids_of_file)]
        assert order == ids_of_file, "lines of one file arrived out of order"


def descriptors_to(path_part: str) -> list[str]:
    """This process's descriptors whose target contains ``path_part``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if path_part in target:
            found.append(target)
    return found


# --- identity ----------------------------------------------------------------------------


def test_a_new_file_on_a_reused_inode_is_read_from_its_start(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Stopped agent; app.log deleted; a new app.log gets the very same inode (ext4 and
    xfs hand a freed inode out again at once). Its checkpoint's dev:inode matches but its
    first bytes do not: it must be read from 0, not from the old offset."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_bytes(lines(range(3)))
    config = file_config(tmp_path, receiver.url, (str(log),), rotate_wait=ROTATE_WAIT)
    with running_agent(config):
        assert wait_for_ids(receiver, ids(range(3)))
    spare = tmp_path / "spare"  # made first, or the directory itself takes the freed inode
    spare.mkdir()
    old_inode = log.stat().st_ino
    log.unlink()
    for attempt in range(20):  # keep the wrong inodes taken until the old one comes back
        log.write_bytes(b"")
        if log.stat().st_ino == old_inode:
            break
        log.rename(spare / str(attempt))
    else:
        pytest.skip("this filesystem did not hand the freed inode out again")
    # Longer than the old offset, so the offset alone cannot tell the files apart.
    append(log, lines(range(100, 120)))
    with running_agent(config) as agent:
        assert wait_for_ids(receiver, ids(range(100, 120)))
        assert wait_until(lambda: caught_up(agent, log), 5)
        time.sleep(SETTLE_SECONDS)  # no duplicate: nothing read again
    assert_exactly_once(receiver, ids(range(3)), ids(range(100, 120)))


def test_a_file_replaced_under_its_name_is_read_from_its_start(
    tmp_path: Path, receiver: Receiver
) -> None:
    """``mv new app.log`` over the tailed file: the old one is finished, the new one read
    from 0, each line once; the replaced file's descriptor is released."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_bytes(lines(range(5)))
    config = file_config(tmp_path, receiver.url, (str(log),), rotate_wait=ROTATE_WAIT)
    with running_agent(config) as agent:
        assert wait_for_ids(receiver, ids(range(5)))
        replacement = logs / "app.log.tmp"
        replacement.write_bytes(lines(range(100, 110)))
        os.replace(replacement, log)
        assert wait_for_ids(receiver, ids(range(100, 110)))
        append(log, lines(range(110, 113)))
        assert wait_for_ids(receiver, ids(range(100, 113)))
        assert wait_until(lambda: caught_up(agent, log), 5)
        time.sleep(SETTLE_SECONDS)  # no duplicate: nothing read again
        # The replaced file is deleted (no name left): nobody should hold it any more.
        replaced = f"{log} (deleted)"
        assert wait_until(lambda: not descriptors_to(replaced), ROTATE_WAIT + 3)
    assert_exactly_once(receiver, ids(range(5)), ids(range(100, 113)))


def test_a_file_renamed_within_the_glob_keeps_its_identity(
    tmp_path: Path, receiver: Receiver
) -> None:
    """app.log -> app-1.log, both matched by app*.log: the same file under a new name is
    not read again; the new app.log is read from its start."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_bytes(lines(range(5)))
    config = file_config(tmp_path, receiver.url, (str(logs / "app*.log"),), rotate_wait=ROTATE_WAIT)
    with running_agent(config) as agent:
        assert wait_for_ids(receiver, ids(range(5)))
        log.rename(logs / "app-1.log")
        append(logs / "app-1.log", lines(range(5, 8)))
        log.write_bytes(lines(range(100, 105)))
        assert wait_for_ids(receiver, ids([*range(8), *range(100, 105)]))
        assert wait_until(lambda: caught_up(agent, log, logs / "app-1.log"), 5)
        time.sleep(SETTLE_SECONDS)  # no duplicate: app-1.log not read again as a new file
    assert_exactly_once(receiver, ids(range(8)), ids(range(100, 105)))


# --- rename rotation -------------------------------------------------------------------


@pytest.mark.parametrize("quiet_before", [False, True], ids=["busy-writer", "quiet-writer"])
def test_rename_rotation_reads_what_the_writer_appends_after_the_rename(
    tmp_path: Path, receiver: Receiver, quiet_before: bool
) -> None:
    """``mv app.log app.log.1; create app.log`` with the glob matching app.log only. The
    writer still holds app.log.1 open and appends to it after the rename (as nginx does
    until it reopens its logs): those lines must be read, within ``rotate_wait``; the new
    app.log from its start; every line once; app.log.1 released afterwards.

    quiet-writer: the file had not grown for longer than ``rotate_wait`` before the
    rename (a quiet filter node), then the writer appends half a second after it."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    config = file_config(tmp_path, receiver.url, (str(log),), rotate_wait=ROTATE_WAIT)
    writer = log.open("ab", buffering=0)
    try:
        with running_agent(config) as agent:
            writer.write(lines(range(10)))
            assert wait_for_ids(receiver, ids(range(10)))
            if quiet_before:  # the scenario itself: quiet for longer than rotate_wait
                time.sleep(ROTATE_WAIT + 1.0)
            log.rename(logs / "app.log.1")
            log.write_bytes(lines(range(100, 105)))
            # The writer has not reopened yet: it appends to app.log.1 for a while.
            for n in range(10, 15):
                time.sleep(0.1)
                writer.write(lines([n]))
            assert wait_for_ids(receiver, ids([*range(15), *range(100, 105)])), (
                f"lost after the rename: {sorted(set(ids(range(10, 15))) - set(got(receiver)))}"
            )
            writer.close()
            append(log, lines(range(105, 108)))
            assert wait_for_ids(receiver, ids(range(100, 108)))
            assert wait_until(lambda: caught_up(agent, log), 5)
            time.sleep(SETTLE_SECONDS)  # no duplicate: nothing read again
            assert wait_until(lambda: not descriptors_to("app.log.1"), ROTATE_WAIT + 3), (
                "app.log.1 is still held open after rotate_wait"
            )
    finally:
        writer.close()
    assert_exactly_once(receiver, ids(range(15)), ids(range(100, 108)))


# --- copytruncate ----------------------------------------------------------------------


def test_copytruncate_reads_again_from_the_start_and_is_counted(
    tmp_path: Path, receiver: Receiver
) -> None:
    """``cp app.log app.log.1; truncate -s0 app.log`` while the writer keeps its O_APPEND
    descriptor, then appends: the new lines are read from offset 0, once each."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    config = file_config(tmp_path, receiver.url, (str(log),), rotate_wait=ROTATE_WAIT)
    with log.open("ab", buffering=0) as writer, running_agent(config) as agent:

        def truncations() -> float | None:
            return agent.registry.get_sample_value(
                "tailhook_file_truncations_total", {"source": "waf"}
            )

        writer.write(lines(range(10)))
        assert wait_for_ids(receiver, ids(range(10)))
        read = log.stat().st_size
        shutil.copyfile(log, logs / "app.log.1")
        os.truncate(log, 0)
        # The agent sees the file shrink before it grows again.
        assert wait_until(lambda: truncations() == 1, 5)
        writer.write(lines(range(10, 13)))
        assert wait_for_ids(receiver, ids(range(13)))
        read += log.stat().st_size
        # A second copytruncate, and lines written in pieces after it.
        shutil.copyfile(log, logs / "app.log.1")
        os.truncate(log, 0)
        assert wait_until(lambda: truncations() == 2, 5)
        data = lines(range(13, 16))
        writer.write(data[:30])
        assert wait_bytes_read(agent, read + 30)  # the first piece read on its own
        writer.write(data[30:])
        assert wait_for_ids(receiver, ids(range(16)))
        assert wait_until(lambda: caught_up(agent, log), 5)
        time.sleep(SETTLE_SECONDS)  # no duplicate, no third truncation
        assert truncations() == 2
    assert_exactly_once(receiver, ids(range(16)))


@pytest.mark.slow
def test_truncate_then_a_bigger_write_before_the_agent_looks_is_noticed(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Truncate and write more than the old offset before the agent looks: the size never
    looks smaller to it. Done in microseconds the agent usually (not always) catches the
    empty file in between, so the real process is frozen (SIGSTOP) meanwhile, as a busy
    node may deschedule it. The first bytes changed, so a fingerprint check can tell: the
    new lines must be read from offset 0, each once, none torn or lost."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_bytes(lines(range(10)))
    config, state = tmp_path / "config.yaml", tmp_path / "state"
    config.write_text(file_source_yaml(state, receiver.url, [str(log)], rotate_wait="1s"))
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        assert wait_for_ids(receiver, ids(range(10)))
        block = lines(range(1000, 1100))
        assert len(block) > 5 * log.stat().st_size
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            fd = os.open(log, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, block)
            finally:
                os.close(fd)
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        delivered = wait_for_ids(receiver, ids(range(1000, 1100)), timeout=5)
        if delivered:
            assert wait_until(lambda: process_caught_up(state, log), 5)
            time.sleep(SETTLE_SECONDS)  # no duplicate: nothing read again
        truncations = agent.metric("tailhook_file_truncations_total", source="waf")
        torn = agent.metric(
            "tailhook_events_total", source="waf", event_type="unknown", outcome="invalid_json"
        )
        assert agent.terminate() == 0
    received = Counter(got(receiver))
    lost = [i for i in ids(range(1000, 1100)) if not received[i]]
    twice = [i for i in ids(range(1000, 1100)) if received[i] > 1]
    assert delivered and truncations == 1 and not torn and not twice, (
        f"truncations={truncations}; torn lines rejected as invalid_json: {torn}; "
        f"{len(lost)} of the 100 new lines lost, {len(twice)} delivered twice "
        f"({twice[:1]}..{twice[-1:]})"
    )
    assert_exactly_once(receiver, ids(range(10)), ids(range(1000, 1100)))


# --- deleted, and rotated while stopped ---------------------------------------------------


@pytest.mark.slow
def test_a_file_deleted_while_open_is_read_to_its_end_then_released(
    tmp_path: Path, receiver: Receiver
) -> None:
    """``tailhook run``: app.log deleted while the writer keeps appending to it; every
    line is read, and after ``rotate_wait`` the process holds no descriptor to it."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.touch()
    config = tmp_path / "config.yaml"
    config.write_text(
        file_source_yaml(tmp_path / "state", receiver.url, [str(log)], rotate_wait="1s")
    )
    with AgentProcess(config, tmp_path / "agent.log") as agent, log.open("ab", buffering=0) as w:
        for n in range(20):
            if n == 10:
                log.unlink()
            w.write(lines([n]))
            time.sleep(0.1)
        assert wait_for_ids(receiver, ids(range(20)))
        w.close()
        assert wait_until(
            lambda: not [t for t in agent.open_files() if "app.log" in t], ROTATE_WAIT + 3
        ), f"still open: {[t for t in agent.open_files() if 'app.log' in t]}"
        # Released, so nothing more is read: once the spool is empty nothing more comes.
        assert wait_until(lambda: drained(tmp_path / "state"), 5)
        assert agent.terminate() == 0
    assert_exactly_once(receiver, ids(range(20)))


def test_rotation_while_stopped_reads_both_files_completely(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Agent stopped; lines appended to app.log; app.log renamed to app-1.log (still
    matched by app*.log); a new app.log written. After the restart the old file goes on
    from its checkpoint and the new one is read from 0."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_bytes(lines(range(5)))
    config = file_config(tmp_path, receiver.url, (str(logs / "app*.log"),), rotate_wait=ROTATE_WAIT)
    with running_agent(config):
        assert wait_for_ids(receiver, ids(range(5)))
    append(log, lines(range(5, 9)) + hit_line(9)[:40])
    log.rename(logs / "app-1.log")
    append(logs / "app-1.log", hit_line(9)[40:] + b"\n")
    log.write_bytes(lines(range(100, 106)))
    with running_agent(config) as agent:
        assert wait_for_ids(receiver, ids([*range(10), *range(100, 106)]))
        assert wait_until(lambda: caught_up(agent, log, logs / "app-1.log"), 5)
        time.sleep(SETTLE_SECONDS)  # no duplicate: neither file read again
    assert_exactly_once(receiver, ids(range(10)), ids(range(100, 106)))


# --- new files, symlinks ------------------------------------------------------------------


def delivery_latency(receiver: Receiver, wanted: str, written_at: float, timeout: float) -> float:
    """Seconds from ``written_at`` (monotonic) to the request that carried ``wanted``."""
    assert receiver.wait_for(
        lambda reqs: wanted in received_ids([r.json() for r in reqs]), timeout
    ), f"{wanted} was not delivered within {timeout} s"
    for request in receiver.requests:
        if wanted in received_ids([request.json()]):
            return request.received_monotonic - written_at
    raise AssertionError("unreachable")


@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_a_new_matching_file_is_picked_up_within_a_second_or_so(
    tmp_path: Path, receiver: Receiver, watch: str
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    config = file_config(
        tmp_path, receiver.url, (str(logs / "app*.log"),), watch=watch, rotate_wait=ROTATE_WAIT
    )
    latencies = []
    with running_agent(config) as agent:
        for n in range(4):
            written_at = time.monotonic()
            (logs / f"app-{n}.log").write_bytes(lines([n]))
            latencies.append(delivery_latency(receiver, f"hit-{n}", written_at, 10))
            time.sleep(0.37)  # land at different points of the 1 s rescan
        new_files = [logs / f"app-{n}.log" for n in range(4)]
        assert wait_until(lambda: caught_up(agent, *new_files), 5)
        time.sleep(SETTLE_SECONDS)  # no duplicate: no file read twice
    print(f"watch={watch}: new-file delivery latency " + ", ".join(f"{s:.2f}s" for s in latencies))
    assert max(latencies) < 2.5, latencies
    assert_exactly_once(receiver, ids(range(4)))


def test_symlinked_paths_are_followed_as_in_var_log_containers(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A directory of symlinks to files elsewhere (Kubernetes' /var/log/containers ->
    /var/log/pods/...), the glob over the symlinks. Appends to the targets happen in
    another directory, which inotify does not watch: the 1 s rescan must find them. A
    kubelet-style rotation of a target (rename, new file under the target's name) keeps
    every line once."""
    pods = tmp_path / "pods"
    containers = tmp_path / "containers"
    containers.mkdir()
    targets = {}
    for name in ("a", "b"):
        (pods / name).mkdir(parents=True)
        targets[name] = pods / name / "0.log"
        (containers / f"{name}.log").symlink_to(targets[name])
    targets["a"].write_bytes(lines([0]))
    targets["b"].write_bytes(lines([100]))
    config = file_config(
        tmp_path, receiver.url, (str(containers / "*.log"),), rotate_wait=ROTATE_WAIT
    )
    latencies = []
    with running_agent(config) as agent:
        assert wait_for_ids(receiver, ["hit-0", "hit-100"])
        for n in range(1, 5):
            time.sleep(0.29)
            written_at = time.monotonic()
            append(targets["a" if n % 2 else "b"], lines([n if n % 2 else 100 + n]))
            wanted = f"hit-{n}" if n % 2 else f"hit-{100 + n}"
            latencies.append(delivery_latency(receiver, wanted, written_at, 10))
        # A new pod: a new symlink to a new target.
        (pods / "c").mkdir()
        (pods / "c" / "0.log").write_bytes(lines([200]))
        written_at = time.monotonic()
        (containers / "c.log").symlink_to(pods / "c" / "0.log")
        latencies.append(delivery_latency(receiver, "hit-200", written_at, 10))
        # kubelet rotates a's target: 0.log -> 0.log.<time>, a new 0.log.
        targets["a"].rename(pods / "a" / "0.log.20240101-000000")
        targets["a"].write_bytes(lines([10, 11]))
        assert wait_for_ids(receiver, ["hit-10", "hit-11"])
        links = [containers / f"{name}.log" for name in ("a", "b", "c")]
        assert wait_until(lambda: caught_up(agent, *links), 5)
        time.sleep(SETTLE_SECONDS)  # no duplicate: no target read twice
    print("symlinked targets: append delivery latency " + ", ".join(f"{s:.2f}s" for s in latencies))
    assert max(latencies) < 2.5, latencies
    assert_exactly_once(receiver, ids([0, 1, 3]), ids([100, 102, 104]), ids([200]), ids([10, 11]))


# --- a half-written line across SIGKILL ----------------------------------------------------


@pytest.mark.slow
def test_a_half_written_line_across_sigkill_is_delivered_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    config, state = tmp_path / "config.yaml", tmp_path / "state"
    config.write_text(file_source_yaml(state, receiver.url, [str(log)], rotate_wait="1s"))
    log.write_bytes(lines(range(5)) + hit_line(5)[:70])
    agent_log = tmp_path / "agent.log"
    with AgentProcess(config, agent_log) as agent:
        assert wait_for_ids(receiver, ids(range(5)))
        # The five are finished in the spool before the kill, so any resend would be a bug.
        assert wait_until(
            lambda: (
                agent.metric(
                    "tailhook_webhook_events_delivered_total", webhook="soc", event_type="hit"
                )
                == 5
            ),
            5,
        )
        # The half line read (and held), not only the five before it.
        size = log.stat().st_size
        assert wait_until(
            lambda: agent.metric("tailhook_source_bytes_total", source="waf") == size, 5
        )
        agent.kill()
    append(log, hit_line(5)[70:] + b"\n" + lines([6]))
    with AgentProcess(config, agent_log) as agent:
        assert wait_for_ids(receiver, ids(range(7)))
        assert wait_until(lambda: process_caught_up(state, log), 5)
        time.sleep(SETTLE_SECONDS)  # no duplicate: nothing read again
        assert agent.terminate() == 0
    assert_exactly_once(receiver, ids(range(7)))
    rejected = state / "rejected" / "waf.jsonl"
    assert not rejected.exists() or rejected.read_text() == "", "a torn half line was rejected"
