"""Reloading the real ``tailhook run``: SIGHUP, a changed file, a Kubernetes ConfigMap
update (a ``..data`` symlink swap), an invalid config refused, systemd's RELOADING=1,
many reloads while lines flow, and reloads inside a SIGKILL-restart loop."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from tests.agent_support import hit_line, received_ids, wait_until
from tests.support.agent_process import AgentProcess
from tests.support.notify_socket import NotifySocket
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow


def config_text(state: Path, log: Path, hooks: dict[str, str], extra: str = "") -> str:
    """One file source and the webhooks ``{name: "url: ...; other settings"}``."""
    text = (
        f"state_dir: {state}\n"
        "metrics: {listen: 127.0.0.1:0}\n"
        f"sources: [{{name: waf, type: file, paths: [{json.dumps(str(log))}]}}]\n"
        "shutdown_timeout: 3s\n"
        "webhooks:\n"
    )
    for name, settings in hooks.items():
        text += f"  - {{name: {name}, events: [hit, system], batch: {{max_wait: 20ms}},"
        text += " retry: {initial_backoff: 50ms, max_backoff: 200ms}, " + settings + "}\n"
    return text + extra


def write_lines(log: Path, numbers: range) -> None:
    with log.open("ab") as out:
        out.write(b"".join(hit_line(n) + b"\n" for n in numbers))


def hits(receiver: Receiver) -> list[str]:
    return received_ids(receiver.bodies_json())


def write_config(path: Path, text: str) -> None:
    """Replace the file in one step, as an editor or a config manager does."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def reloads(agent: AgentProcess, result: str) -> float:
    return agent.metric("tailhook_config_reloads_total", result=result) or 0.0


def test_sighup_applies_a_valid_config_and_refuses_an_invalid_one(tmp_path: Path) -> None:
    log, state, config = tmp_path / "detections.log", tmp_path / "state", tmp_path / "c.yaml"
    log.write_bytes(b"")
    with Receiver() as soc, Receiver() as second:
        hooks = {"soc": f"url: {soc.url}"}
        config.write_text(config_text(state, log, hooks))
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            assert agent.metric("tailhook_config_last_reload_successful") == 1
            assert reloads(agent, "failure") == 0  # exported from the start
            offset = agent.log_path.stat().st_size
            bad = config_text(state, log, {**hooks, "new": "url: ftp://x, evnts: [hit]"})
            config.write_text(bad.replace("shutdown_timeout: 3s", "shutdown_timeout: soon"))
            os.kill(agent.pid, signal.SIGHUP)
            assert wait_until(lambda: reloads(agent, "failure") == 1, 10)
            assert agent.metric("tailhook_config_last_reload_successful") == 0
            errors = [
                json.loads(line)
                for line in agent.log_since(offset).splitlines()
                if '"level": "error"' in line
            ]
            problems = {(e["path"], e["problem"]) for e in errors}
            assert {path for path, _ in problems} >= {
                "shutdown_timeout",
                "webhooks[1].url",
                "webhooks[1].evnts",
            }, problems
            assert all(e["message"].startswith("The new config is invalid") for e in errors)
            # The running config stays: soc still delivers.
            write_lines(log, range(3))
            assert soc.wait_for(lambda _: hits(soc) == ["hit-0", "hit-1", "hit-2"], 10)
            # A valid config is applied without a restart.
            config.write_text(config_text(state, log, {**hooks, "second": f"url: {second.url}"}))
            os.kill(agent.pid, signal.SIGHUP)
            assert wait_until(lambda: reloads(agent, "success") == 1, 10)
            assert agent.metric("tailhook_config_last_reload_successful") == 1
            write_lines(log, range(3, 5))
            assert second.wait_for(lambda _: hits(second) == ["hit-3", "hit-4"], 10)
            assert soc.wait_for(lambda _: len(hits(soc)) == 5, 10)
            assert agent.terminate() == 0


def test_a_configmap_update_is_noticed_and_applied(tmp_path: Path) -> None:
    """Kubernetes mounts ``config.yaml -> ..data/config.yaml`` and ``..data -> ..TS``;
    an update writes a new ``..TS2`` and renames a new ``..data`` link over the old."""
    log, state = tmp_path / "detections.log", tmp_path / "state"
    log.write_bytes(b"")
    mount = tmp_path / "config"
    (mount / "..2026_01").mkdir(parents=True)
    with Receiver() as soc, Receiver() as second:
        hooks = {"soc": f"url: {soc.url}"}
        (mount / "..2026_01" / "config.yaml").write_text(config_text(state, log, hooks))
        os.symlink("..2026_01", mount / "..data")
        os.symlink("..data/config.yaml", mount / "config.yaml")
        with AgentProcess(mount / "config.yaml", tmp_path / "agent.log") as agent:
            (mount / "..2026_02").mkdir()
            new = config_text(state, log, {**hooks, "second": f"url: {second.url}"})
            (mount / "..2026_02" / "config.yaml").write_text(new)
            os.symlink("..2026_02", mount / "..data_tmp")
            os.replace(mount / "..data_tmp", mount / "..data")
            assert wait_until(lambda: reloads(agent, "success") == 1, 10)
            write_lines(log, range(2))
            assert second.wait_for(lambda _: hits(second) == ["hit-0", "hit-1"], 10)
            # Touching the file without changing it is not a reload.
            os.utime(mount / "..2026_02" / "config.yaml")
            assert not wait_until(lambda: reloads(agent, "success") > 1, 2.5)
            assert agent.terminate() == 0


def test_a_reload_under_systemd_says_reloading_then_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, state, config = tmp_path / "detections.log", tmp_path / "state", tmp_path / "c.yaml"
    log.write_bytes(b"")
    with Receiver() as soc, NotifySocket(tmp_path / "notify") as systemd:
        monkeypatch.setenv("NOTIFY_SOCKET", systemd.env)
        config.write_text(config_text(state, log, {"soc": f"url: {soc.url}"}))
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            first_ready = systemd.wait_for("READY")
            os.kill(agent.pid, signal.SIGHUP)
            reloading = systemd.wait_for("RELOADING")
            assert int(reloading.fields["MONOTONIC_USEC"]) > 0
            assert reloading.at >= first_ready.at
            assert wait_until(lambda: len(systemd.with_key("READY")) == 2, 10)
            assert systemd.with_key("READY")[1].at >= reloading.at
            assert agent.terminate() == 0


def request_ids(receiver: Receiver) -> dict[str, set[str]]:
    """For each event, the ``webhook-id``s of the requests that carried it."""
    carried: dict[str, set[str]] = defaultdict(set)
    for request in list(receiver.requests):
        for event in received_ids([request.json()]):
            carried[event].add(request.headers["webhook-id"])
    return carried


def test_many_reloads_while_lines_flow_lose_and_double_nothing(tmp_path: Path) -> None:
    """``soc`` never changes: it gets every line once, in order. ``churn`` is added,
    changed, disabled, re-enabled and deleted over and over: whatever it gets, each
    event under one ``webhook-id`` only."""
    log, state, config = tmp_path / "detections.log", tmp_path / "state", tmp_path / "c.yaml"
    log.write_bytes(b"")
    rng = random.Random(7)
    with Receiver() as soc, Receiver() as churn_a, Receiver() as churn_b:
        steady = {"soc": f"url: {soc.url}"}
        variants = [
            steady,
            {**steady, "churn": f"url: {churn_a.url}"},
            {**steady, "churn": f"url: {churn_b.url}"},
            {**steady, "churn": f"url: {churn_a.url}, request_timeout: 3s"},
            {**steady, "churn": f"url: {churn_a.url}, enabled: false"},
        ]
        config.write_text(config_text(state, log, steady))
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            written = 0
            stop = threading.Event()

            def writer() -> None:
                nonlocal written
                while not stop.is_set() and written < 3000:
                    write_lines(log, range(written, written + 20))
                    written += 20
                    stop.wait(0.01)

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                for n in range(25):
                    write_config(config, config_text(state, log, rng.choice(variants)))
                    os.kill(agent.pid, signal.SIGHUP)
                    assert wait_until(lambda n=n: sum_reloads(agent) >= n + 1, 10)
            finally:
                stop.set()
                thread.join(10)
            wanted = [f"hit-{n}" for n in range(written)]
            assert soc.wait_for(lambda _: len(set(hits(soc))) == written, 20)
            assert agent.terminate() == 0
        assert reloads_failed(agent) == 0
    assert hits(soc) == wanted, "the unchanged webhook lost, doubled or reordered a line"
    for receiver in (churn_a, churn_b):
        doubled = {e: ids for e, ids in request_ids(receiver).items() if len(ids) > 1}
        assert not doubled, f"events sent under two webhook-ids: {list(doubled)[:5]}"


def sum_reloads(agent: AgentProcess) -> float:
    return reloads(agent, "success") + reloads(agent, "failure")


def reloads_failed(agent: AgentProcess) -> float:
    text = agent.log_since()
    return float(text.count('"The new config is invalid'))


def test_reloads_inside_a_sigkill_restart_loop_lose_nothing(tmp_path: Path) -> None:
    log, state, config = tmp_path / "detections.log", tmp_path / "state", tmp_path / "c.yaml"
    log.write_bytes(b"")
    rng = random.Random(11)
    with Receiver() as soc, Receiver() as other:
        steady = {"soc": f"url: {soc.url}"}
        variants = [steady, {**steady, "other": f"url: {other.url}"}]
        config.write_text(config_text(state, log, steady))
        written = 0
        for _round in range(6):
            with AgentProcess(config, tmp_path / "agent.log") as agent:
                for _ in range(3):
                    write_lines(log, range(written, written + 50))
                    written += 50
                    write_config(config, config_text(state, log, rng.choice(variants)))
                    os.kill(agent.pid, signal.SIGHUP)
                    threading.Event().wait(rng.uniform(0.0, 0.3))
                agent.kill()
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            wanted = {f"hit-{n}" for n in range(written)}
            assert soc.wait_for(lambda _: wanted <= set(hits(soc)), 30), sorted(
                wanted - set(hits(soc))
            )[:10]
            assert agent.terminate() == 0
