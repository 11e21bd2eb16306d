"""The crash test: ``tailhook run`` SIGKILLed at random moments, again and again, while
lines are appended to its log file and the webhook flaps (503s, slow answers that time
out, dropped connections, refused connections).

Once the agent has drained, with the receiver healthy again, what the receiver got must
show that nothing was lost, torn or merged, and that the only duplicates are resends of
one batch: every line received at least once; every notification a whole hit from one
written line; every request carrying a given ``webhook-id`` the same body; every line
that came more than once came each time under the same ``webhook-id``; and batches went
out in the order the lines were written.

Everything random comes from one seed, printed at the start (pytest shows it when the
test fails); set ``TAILHOOK_CRASH_SEED`` to run the same choices again. Timing still
varies from run to run, so a seed reproduces the script, not the interleaving.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.agent_support import hit_line
from tests.support.flapping import Exchange, FlappingReceiver
from tests.support.receiver import RecordedRequest, Response, Script

pytestmark = pytest.mark.slow

SEED_ENV = "TAILHOOK_CRASH_SEED"
KILLS = 15
REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
state_dir: {state}
metrics:
  listen: 127.0.0.1:0
log:
  level: info
  format: json
sources:
  - name: waf
    type: file
    paths: ["{logs}/detections*.log"]
webhooks:
  - name: soc
    url: {url}
    events: [hit]
    request_timeout: {request_timeout}
    connect_timeout: 1s
    batch: {{max_events: 20, max_wait: 50ms}}
    retry: {{initial_backoff: 50ms, max_backoff: 500ms}}
shutdown_timeout: 2s
"""

HIT_FIELDS = {
    "anomality", "domain", "heur_distance", "method", "parameter", "path", "payloads",
    "point", "probability", "remote_country", "remote_port", "remote_addr4", "remote_addr6",
    "datacenter", "tor", "request_time", "create_time", "response_len", "response_status",
    "response_time", "stamps", "regex", "stamps_hash", "regex_hash", "type", "block_status",
    "id", "object_type",
}  # fmt: skip
#: The fields of hit_line(n)'s notification that depend on n; all others are the same.
PER_LINE_FIELDS = ("id", "payloads", "request_time", "create_time")


def expected_per_line_fields(n: int) -> dict[str, Any]:
    return {
        "id": [f"hit-{n}"],
        "payloads": [f"'or {n}={n}--"],
        "request_time": 1591261367 + n,
        "create_time": 1591261381 + n,
    }


# --- the world around the agent --------------------------------------------------------


class LogWriter(threading.Thread):
    """Appends hit_line(0), hit_line(1), ... in bursts of random size, each burst written
    in one to three pieces cut at random bytes (so lines are often half written for a
    while), until stopped. A burst is always finished, so the file ends with a newline."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.path = path
        self.rng = rng
        self.written = 0  # hit_line(0) .. hit_line(written - 1) are in the file, whole
        self.torn_writes = 0  # pieces that ended inside a line
        self.error: Exception | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            with self.path.open("ab", buffering=0) as out:
                while not self._halt.is_set():
                    self._burst(out)
                    self._halt.wait(self.rng.uniform(0.01, 0.2))
        except Exception as exc:  # noqa: BLE001 (the test reports it after join)
            self.error = exc

    def _burst(self, out: Any) -> None:
        count = self.rng.randint(1, 25)
        data = b"".join(hit_line(n) + b"\n" for n in range(self.written, self.written + count))
        cuts = sorted(self.rng.sample(range(1, len(data)), self.rng.randint(0, 2)))
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            out.write(data[start:end])
            if end < len(data):
                self.torn_writes += data[end - 1] != ord("\n")
                time.sleep(self.rng.uniform(0.001, 0.08))
        self.written += count

    def stop(self) -> None:
        self._halt.set()
        if self.ident is not None:
            self.join(10)


def flaky_answers(rng: random.Random) -> Script:
    """200s, 503s (some with Retry-After), slow 200s and 503s (0.2-1 s, past a 0.5 s
    request_timeout more often than not), connections reset or closed without an answer."""

    def answer(_request: RecordedRequest, _n: int) -> Response:
        roll = rng.random()
        if roll < 0.40:
            return Response(200)
        if roll < 0.55:
            return Response(503)
        if roll < 0.60:
            return Response(503, headers={"Retry-After": "1"})
        if roll < 0.75:
            return Response(200, delay=rng.uniform(0.2, 1.0))
        if roll < 0.80:
            return Response(503, delay=rng.uniform(0.2, 1.0))
        if roll < 0.90:
            return Response(drop="reset", delay=rng.choice([0.0, rng.uniform(0.0, 0.3)]))
        return Response(drop="close", delay=rng.choice([0.0, rng.uniform(0.0, 0.3)]))

    return answer


class KillOnAnswer:
    """SIGKILLs an agent a moment after the receiver decides to answer it a plain 200, to
    land between the answer and the agent recording the delivery (a window of well under
    a millisecond, which a kill from the test's own thread nearly always misses)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: tuple[subprocess.Popen[bytes], float] | None = None
        self._timer: threading.Timer | None = None
        self._fired = threading.Event()
        self.fired = 0

    def wrap(self, script: Script) -> Script:
        def answer(request: RecordedRequest, n: int) -> Response:
            response = script(request, n)
            if response == Response(200):
                self._fire()
            return response

        return answer

    def arm(self, process: subprocess.Popen[bytes], delay: float) -> None:
        with self._lock:
            self._armed = (process, delay)
            self._fired.clear()

    def disarm(self, wait: float) -> None:
        """Wait up to ``wait`` s for the kill to fire; disarm; wait for a fired kill."""
        self._fired.wait(wait)
        with self._lock:
            self._armed, timer, self._timer = None, self._timer, None
        if timer is not None:
            timer.join(5)

    def _fire(self) -> None:
        with self._lock:
            if self._armed is None:
                return
            (process, delay), self._armed = self._armed, None
            self._timer = threading.Timer(delay, process.kill)
            self._timer.start()
            self.fired += 1
        self._fired.set()


# --- the agent ---------------------------------------------------------------------------


@dataclass
class Runs:
    """The ``tailhook run`` processes started, one stderr log each, and when each ran."""

    directory: Path
    config: Path
    windows: list[tuple[float, float]] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self, request_timeout: str, url: str, logs: Path) -> subprocess.Popen[bytes]:
        self.config.write_text(
            CONFIG.format(
                state=self.directory / "state", logs=logs, url=url, request_timeout=request_timeout
            )
        )
        with self.log(len(self.windows)).open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=REPO,
            )
        self.windows.append((time.monotonic(), float("inf")))
        return self.process

    def ended(self) -> None:
        start, _ = self.windows[-1]
        self.windows[-1] = (start, time.monotonic())
        self.process = None

    def kill(self) -> None:
        """SIGKILL the running agent (by its pid) and reap it."""
        assert self.process is not None
        process = self.process
        process.kill()
        process.wait(10)
        self.ended()

    def log(self, index: int) -> Path:
        return self.directory / f"agent-{index}.log"

    def log_tail(self, index: int | None = None, lines: int = 30) -> str:
        index = len(self.windows) - 1 if index is None else index
        path = self.log(index)
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {path} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])

    def run_of(self, moment: float) -> int:
        """Which run a request recorded at ``moment`` (monotonic) came from."""
        for index, (start, end) in enumerate(self.windows):
            if start <= moment <= end:
                return index
        return -1

    def metrics_url(self, timeout: float) -> str:
        """The running agent's metrics URL, from its "tailhook is running" log line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log(len(self.windows) - 1).read_text(errors="replace").splitlines():
                if '"tailhook is running"' in line and line.endswith("}"):
                    return str(json.loads(line)["metrics"])
            time.sleep(0.05)
        raise AssertionError("tailhook did not start\n" + self.log_tail())

    def stop_all(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def hit_number(obj: Any) -> int:
    [text] = obj["id"]
    match = re.fullmatch(r"hit-(\d+)", text)
    assert match, f"not an id of a written line: {obj['id']!r}"
    return int(match.group(1))


class Tally:
    """Which line numbers the receiver has got, parsed once per request as they come."""

    def __init__(self, receiver: FlappingReceiver) -> None:
        self.receiver = receiver
        self.seen = 0
        self.numbers: set[int] = set()

    def update(self) -> set[int]:
        fresh = self.receiver.exchanges[self.seen :]
        self.seen += len(fresh)
        for exchange in fresh:
            if exchange.complete:
                self.numbers.update(hit_number(obj) for obj in exchange.request.json())
        return self.numbers


def rejected_lines(state: Path) -> str:
    """What the rejected-lines files hold (lines torn or merged on the way in), if any."""
    entries = [
        json.loads(line)
        for path in sorted(state.glob("rejected/*.jsonl*"))
        for line in path.read_text().splitlines()
    ]
    if not entries:
        return ""
    reasons = Counter(entry["reason"] for entry in entries)
    return f"{len(entries)} lines rejected ({dict(reasons)}), e.g. {entries[0]['line'][:120]!r}\n"


def backlog(metrics_url: str) -> float | None:
    text = requests.get(metrics_url, timeout=5).text
    match = re.search(r'^tailhook_webhook_backlog_events\{webhook="soc"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


# --- the test ----------------------------------------------------------------------------


def test_sigkill_at_random_moments_while_writing_and_flapping_loses_and_tears_nothing(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"crash test seed: {seed} (to rerun the same choices: {SEED_ENV}={seed})")
    rng = random.Random(seed)
    writer_rng, answer_rng, flap_rng = (random.Random(rng.random()) for _ in range(3))
    why = f" [seed {seed}]"

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "detections.log").touch()
    runs = Runs(tmp_path, tmp_path / "config.yaml")
    writer = LogWriter(logs / "detections.log", writer_rng)
    killer = KillOnAnswer()
    with FlappingReceiver(killer.wrap(flaky_answers(answer_rng))) as receiver:
        try:
            receiver.start_flapping(flap_rng)
            writer.start()
            for _ in range(KILLS):
                process = runs.start(rng.choice(["500ms", "500ms", "2s"]), receiver.url, logs)
                on_answer = rng.random() < 0.5
                time.sleep(rng.uniform(0.2, 1.0) if on_answer else rng.uniform(0.2, 2.0))
                assert process.poll() is None, (
                    f"tailhook exited by itself ({process.returncode}){why}\n" + runs.log_tail()
                )
                if on_answer:  # within 1 ms of a 200: before, while or after it is recorded
                    killer.arm(process, rng.uniform(0.0, 0.001))
                    killer.disarm(wait=1.5)
                runs.kill()
                time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.3)]))
            writer.stop()
            assert writer.error is None, f"the log writer failed: {writer.error!r}"
            receiver.stop_flapping()
            receiver.answer_with(200)
            drain(runs, receiver, set(range(writer.written)), logs, why)
        finally:
            runs.stop_all()
            writer.stop()
        exchanges = receiver.exchanges

    report = check_deliveries(exchanges, writer.written, runs, why)
    report.update(
        seed=seed,
        kills=KILLS,
        kills_on_answer=killer.fired,
        lines=writer.written,
        torn_writes=writer.torn_writes,
        receiver_downs=receiver.downs,
    )
    print("crash test:", json.dumps(report))
    assert report["receiver_downs"] > 0 and report["torn_writes"] > 0, report
    assert not rejected_lines(tmp_path / "state"), rejected_lines(tmp_path / "state") + why
    assert not (tmp_path / "state" / "dead-letter").exists(), "batches were dead-lettered" + why


def drain(runs: Runs, receiver: FlappingReceiver, written: set[int], logs: Path, why: str) -> None:
    """Run the agent once more against a healthy receiver until every written line has
    come and its backlog is empty; then SIGTERM, and a clean exit."""
    process = runs.start("5s", receiver.url, logs)
    metrics_url = runs.metrics_url(20)
    tally = Tally(receiver)
    deadline = time.monotonic() + 45
    idle_since, seen = time.monotonic(), 0
    while not written <= tally.update() and time.monotonic() < deadline:
        if tally.seen != seen:
            idle_since, seen = time.monotonic(), tally.seen
        elif time.monotonic() - idle_since > 5 and backlog(metrics_url) == 0:
            break  # nothing more is coming
        time.sleep(0.2)
    missing = sorted(written - tally.numbers)
    assert not missing, (
        f"{len(missing)} lines never received, e.g. {missing[:10]}{why}\n"
        + rejected_lines(runs.directory / "state")
        + runs.log_tail()
    )
    deadline = time.monotonic() + 15
    while backlog(metrics_url) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert backlog(metrics_url) == 0, "the backlog did not drain" + why
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0, "no clean stop on SIGTERM" + why + "\n" + runs.log_tail()
    runs.ended()


def check_deliveries(
    exchanges: list[Exchange], written: int, runs: Runs, why: str
) -> dict[str, Any]:
    """Assert what the receiver got; return counts of what happened, for the record.

    A request whose body was cut short (the agent was killed while sending it) was never
    received: it is only counted."""
    cut_short = sum(not exchange.complete for exchange in exchanges)
    exchanges = [exchange for exchange in exchanges if exchange.complete]
    by_id: dict[str, list[Exchange]] = defaultdict(list)
    ids_of_line: dict[int, set[str]] = defaultdict(set)
    copies_of_line: Counter[int] = Counter()
    first_seen: list[str] = []
    reference: dict[str, Any] | None = None
    for exchange in exchanges:
        request = exchange.request
        webhook_id = request.headers["webhook-id"]
        if webhook_id not in by_id:
            first_seen.append(webhook_id)
        by_id[webhook_id].append(exchange)
        body = request.json()
        assert isinstance(body, list) and body, f"not a non-empty array: {request.body[:200]!r}"
        numbers = [hit_number(obj) for obj in body]
        assert len(set(numbers)) == len(numbers), f"a line twice in one batch: {numbers}{why}"
        for n, obj in zip(numbers, body, strict=True):
            assert 0 <= n < written, f"hit-{n} was never written{why}"
            assert set(obj) == HIT_FIELDS, f"hit-{n}: fields {sorted(obj)}{why}"
            assert obj["object_type"] == "hit"
            expected = expected_per_line_fields(n)
            assert {k: obj[k] for k in PER_LINE_FIELDS} == expected, f"hit-{n} torn{why}"
            rest = {k: v for k, v in obj.items() if k not in PER_LINE_FIELDS}
            reference = reference or rest
            assert rest == reference, f"hit-{n} differs from the other hits: {rest}{why}"
            ids_of_line[n].add(webhook_id)
            copies_of_line[n] += 1

    assert set(ids_of_line) == set(range(written)), "not every line was received" + why
    for webhook_id, copies in by_id.items():
        bodies = {exchange.request.body for exchange in copies}
        assert len(bodies) == 1, f"{webhook_id} was sent with {len(bodies)} bodies{why}"
    twice = {n: ids for n, ids in ids_of_line.items() if len(ids) > 1}
    assert not twice, (
        f"{len(twice)} lines came in batches with different webhook-ids, e.g. "
        + ", ".join(f"hit-{n}: {len(ids)} ids" for n, ids in sorted(twice.items())[:5])
        + why
        + "\n"
        + describe_batches(by_id, sorted(twice)[0], runs)
    )
    order = [hit_number(obj) for wid in first_seen for obj in by_id[wid][0].request.json()]
    assert order == sorted(order), "batches went out of the order the lines were written" + why

    resent_after_restart = acknowledged_then_resent = 0
    for copies in by_id.values():
        run_of = [runs.run_of(e.request.received_monotonic) for e in copies]
        if len(set(run_of)) > 1:
            resent_after_restart += 1
            first_run = run_of[0]
            if any(
                e.response == Response(200)
                for e, r in zip(copies, run_of, strict=True)
                if r == first_run
            ):
                acknowledged_then_resent += 1
    outcomes = Counter(describe_response(e.response) for e in exchanges)
    return {
        "requests": len(exchanges),
        "requests_cut_short": cut_short,
        "batches": len(by_id),
        "batches_sent_more_than_once": sum(len(c) > 1 for c in by_id.values()),
        "batches_resent_after_a_kill": resent_after_restart,
        "batches_answered_200_then_resent_after_a_kill": acknowledged_then_resent,
        "lines_received_more_than_once": sum(count > 1 for count in copies_of_line.values()),
        "answers": dict(sorted(outcomes.items())),
    }


def describe_response(response: Response) -> str:
    if response.drop:
        return f"drop-{response.drop}"
    return f"{response.status}{'-slow' if response.delay else ''}"


def describe_batches(by_id: dict[str, list[Exchange]], n: int, runs: Runs) -> str:
    """Where line ``n`` went: each batch holding it, its lines, the runs it was sent in."""
    lines = []
    for webhook_id, copies in by_id.items():
        numbers = [hit_number(obj) for obj in copies[0].request.json()]
        if n in numbers:
            sent_in = sorted({runs.run_of(e.request.received_monotonic) for e in copies})
            lines.append(
                f"{webhook_id}: lines {numbers[0]}..{numbers[-1]} ({len(numbers)}), "
                f"sent {len(copies)} times in runs {sent_in}, answers "
                f"{[describe_response(e.response) for e in copies]}"
            )
    return "\n".join(lines)
