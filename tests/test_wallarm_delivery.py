"""``payload: wallarm``, ``body: ndjson`` and filters, delivered by the real agent to real
receivers on loopback: what the receiver gets, byte for byte, signed, and held against
the output schemas; classic webhooks get the very bytes they got before."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from agent.config import Config, FilterConfig, SigningConfig, WallarmConfig, WebhookConfig
from agent.replay import replay_dead_letters
from agent.schemas import fast_validator
from tests.agent_support import ALL, caught_up, file_config, hit_line, running_agent, wait_until
from tests.support.agent_process import AgentProcess, file_source_yaml
from tests.support.receiver import Receiver, RecordedRequest

GOLDEN = Path(__file__).parent / "data" / "golden"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SCHEMA_OF = {
    "new_hits": "wallarm-hit",
    "vuln": "wallarm-vulnerability",
    "create_user": "wallarm-system",
    "new_scope_object_ips": "wallarm-scope",
}


def envelope_schema(obj: dict[str, Any]) -> str:
    return SCHEMA_OF[obj["details"]["notification_type"]]


def assert_valid_envelopes(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        assert fast_validator(envelope_schema(obj)).is_valid(obj), obj


def ndjson(request: RecordedRequest) -> list[dict[str, Any]]:
    """The objects of an NDJSON body, each of its lines ending in a newline."""
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert request.body.endswith(b"\n")
    return [orjson.loads(line) for line in request.body[:-1].split(b"\n")]


def custom_hit(n: int, **changes: Any) -> bytes:
    line = orjson.loads(hit_line(n))
    line.update(changes)
    return orjson.dumps(line)


def test_a_wallarm_ndjson_webhook_gets_signed_envelopes_and_classic_the_same_bytes(
    tmp_path: Path, receiver: Receiver
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    base = file_config(tmp_path, receiver.url, (str(log),))
    classic = replace(base.webhooks[0], name="classic")
    with Receiver() as other:
        wallarm = replace(
            classic,
            name="wallarm",
            url=other.url,
            payload="wallarm",
            body="ndjson",
            signing=SigningConfig((SECRET,)),
        )
        config = replace(base, webhooks=(classic, wallarm))
        with running_agent(config) as agent:
            log.write_bytes((GOLDEN / "detections.jsonl").read_bytes())
            assert wait_until(lambda: caught_up(agent, log), 10)
        [plain] = receiver.requests
        [wrapped] = other.requests
    assert plain.body == (GOLDEN / "classic-body.json").read_bytes()
    assert plain.headers["Content-Type"] == "application/json"
    objects = ndjson(wrapped)
    assert [envelope_schema(obj) for obj in objects] == list(SCHEMA_OF.values())
    assert_valid_envelopes(objects)
    assert {(o["details"]["client_name"], o["details"]["cloud"]) for o in objects} == {
        (socket.gethostname(), "EU")
    }
    assert [o["details"]["hit"]["id"] for o in objects[:1]] == [orjson.loads(plain.body)[0]["id"]]
    # The signature covers the body as sent: the NDJSON bytes.
    assert Webhook(SECRET).verify(wrapped.body, dict(wrapped.headers), json_parse=False) is None
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(wrapped.body[:-1], dict(wrapped.headers), json_parse=False)


@pytest.mark.parametrize("body", ["json_array", "ndjson"])
def test_a_reload_changes_the_form_of_later_batches_not_of_the_one_in_flight(
    tmp_path: Path, receiver: Receiver, body: str
) -> None:
    """Only the identity changes (the sink stays, its batch in memory), or the body too
    (the sink is replaced, and the new one rebuilds the batch from the spool)."""
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    base = file_config(tmp_path, receiver.url, (str(log),))
    hook = replace(base.webhooks[0], payload="wallarm")
    before = replace(base, webhooks=(hook,), wallarm=WallarmConfig("before", "EU"))
    receiver.answer_with(503)
    with running_agent(before) as agent:
        log.write_bytes(hit_line(1) + b"\n")
        assert receiver.wait_for(2, 10)  # refused, and retried with the same bytes
        first = receiver.requests[0]
        after = replace(
            before, webhooks=(replace(hook, body=body),), wallarm=WallarmConfig("after", "US")
        )
        plan = agent.apply(after)
        assert plan.stop_sinks == (() if body == "json_array" else ("soc",))
        assert receiver.wait_for(len(receiver.requests) + 1, 10)  # retried since
        receiver.answer_with(200)
        assert wait_until(lambda: caught_up(agent, log), 10)
        with log.open("ab") as out:
            out.write(hit_line(2) + b"\n")
        assert wait_until(lambda: caught_up(agent, log), 10)
    msg_id = first.headers["webhook-id"]
    same_id = [r for r in receiver.requests if r.headers["webhook-id"] == msg_id]
    assert len(same_id) >= 3 and all(r.body == first.body for r in same_id)
    assert {r.headers["Content-Type"] for r in same_id} == {"application/json"}
    assert orjson.loads(first.body)[0]["details"]["client_name"] == "before"
    [later] = [r for r in receiver.requests if r not in same_id]
    [obj] = ndjson(later) if body == "ndjson" else later.json()
    assert (obj["details"]["client_name"], obj["details"]["cloud"]) == ("after", "US")


def test_a_vulnerability_envelope_carries_the_fields_of_its_line(
    tmp_path: Path, receiver: Receiver
) -> None:
    """``method``, ``path``, ``parameter``, ``discovered_by`` are not in the §5 object:
    they are kept beside it in the spool, from the line, for the envelope."""
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    base = file_config(tmp_path, receiver.url, (str(log),))
    config = replace(base, webhooks=(replace(base.webhooks[0], payload="wallarm"),))
    line = orjson.loads((GOLDEN / "detections.jsonl").read_bytes().splitlines()[1])
    given = {"method": "POST", "path": "/login", "parameter": "user", "discovered_by": "scanner"}
    with running_agent(config) as agent:
        log.write_bytes(
            orjson.dumps({**line, "id": 7, **given}) + b"\n" + orjson.dumps(line) + b"\n"
        )
        assert wait_until(lambda: caught_up(agent, log), 10)
    objects = [obj for request in receiver.requests for obj in request.json()]
    assert_valid_envelopes(objects)
    first, second = (obj["details"]["vuln"] for obj in objects)
    assert first == {**first, "id": 7, **given}
    assert "Method: POST\nDiscovered by: scanner\nParameter: user\n" in objects[0]["description"]
    assert (second["id"], second["method"], second["path"]) == (282157, None, None)


def test_a_dead_letter_keeps_the_plain_objects_and_a_replay_wraps_them_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    base = file_config(tmp_path, receiver.url, (str(log),))
    hook = replace(base.webhooks[0], payload="wallarm", body="ndjson")
    config = replace(base, webhooks=(hook,))
    receiver.answer_with(400)
    letters = config.state_dir / "dead-letter" / "soc.jsonl"
    with running_agent(config) as agent:
        log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(2)))
        assert wait_until(letters.exists, 10)
        [entry] = [orjson.loads(line) for line in letters.read_bytes().splitlines()]
        # What the receiver refused, as the §5 objects a replay can queue again.
        assert [obj["id"] for obj in entry["events"]] == [["hit-0"], ["hit-1"]]
        assert [obj["object_type"] for obj in entry["events"]] == ["hit", "hit"]
        receiver.answer_with(200)
        assert agent.spool is not None
        outcome = replay_dead_letters(config.state_dir, agent.spool, "soc")
        assert outcome.events == 2
        assert receiver.wait_for(2, 10)
    refused, replayed = receiver.requests
    assert [obj["details"]["hit"]["id"] for obj in ndjson(refused)] == [["hit-0"], ["hit-1"]]
    assert ndjson(replayed) == ndjson(refused)
    assert replayed.headers["webhook-id"] != refused.headers["webhook-id"]


@pytest.mark.slow
def test_a_batch_is_resent_in_its_recorded_form_after_a_crash_and_a_new_config(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Killed with a batch in flight, restarted with another identity and NDJSON: the
    batch goes again as it was first sent (JSON array, old identity, same signature
    input); what is formed after the restart is in the new form."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "detections.log"
    config = tmp_path / "config.yaml"
    yaml = file_source_yaml(tmp_path / "state", receiver.url, [str(log)])
    batch = "    batch: {max_wait: 50ms}\n"
    yaml = yaml.replace(batch, f"{batch}    payload: wallarm\n    signing: {{secret: {SECRET}}}\n")
    config.write_text(yaml + "wallarm: {client_name: before}\n")
    receiver.answer_with(503)
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(3)))
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        assert receiver.wait_for(1, 15)
        agent.kill()
    refused = receiver.requests[0]
    assert refused.headers["Content-Type"] == "application/json"
    config.write_text(
        yaml.replace("    payload: wallarm\n", "    payload: wallarm\n    body: ndjson\n")
        + "wallarm: {client_name: after, cloud: US}\n"
    )
    receiver.answer_with(200)
    msg_id = refused.headers["webhook-id"]
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        assert receiver.wait_for(lambda r: any(b"hit-2" in x.body for x in r[1:]), 15)
        with log.open("ab") as out:
            out.write(hit_line(3) + b"\n")
        assert receiver.wait_for(lambda r: any(b"hit-3" in x.body for x in r), 15)
        assert agent.terminate() == 0
    resent = [r for r in receiver.requests[1:] if r.headers["webhook-id"] == msg_id]
    assert resent and all(r.body == refused.body for r in resent)
    assert all(r.headers["Content-Type"] == "application/json" for r in resent)
    for request in receiver.requests:
        Webhook(SECRET).verify(request.body, dict(request.headers), json_parse=False)
    [later] = [r for r in receiver.requests if b"hit-3" in r.body]
    [obj] = ndjson(later)
    assert (obj["details"]["client_name"], obj["details"]["cloud"]) == ("after", "US")
    assert orjson.loads(refused.body)[0]["details"]["client_name"] == "before"


def test_only_blocked_sql_injections_on_the_shop_go_to_the_soc(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The README's worked example, end to end: a filtered and an unfiltered webhook."""
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    base = file_config(tmp_path, receiver.url, (str(log),))
    soc = replace(
        base.webhooks[0],
        events=frozenset({"hit", "system"}),
        filter=FilterConfig(
            block_status=frozenset({"blocked"}),
            attack_types=frozenset({"sqli"}),
            domains=("*.shop.example.com",),
        ),
    )
    lines = [
        custom_hit(1, block_status="blocked", domain="www.shop.example.com"),
        custom_hit(2, block_status="monitored", domain="www.shop.example.com"),
        custom_hit(3, block_status="blocked", attack_type="xss", domain="cart.shop.example.com"),
        custom_hit(4, block_status="blocked", domain="blog.example.com"),
        custom_hit(5, block_status="blocked", domain="CART.Shop.Example.com"),
        (GOLDEN / "detections.jsonl").read_bytes().splitlines()[2],  # a system event
    ]
    with Receiver() as other:
        everything = replace(base.webhooks[0], name="archive", url=other.url, events=ALL)
        config = replace(base, webhooks=(soc, everything))
        with running_agent(config) as agent:
            log.write_bytes(b"".join(line + b"\n" for line in lines))
            assert wait_until(lambda: caught_up(agent, log), 10)

            def value(name: str, **labels: str) -> float:
                return agent.registry.get_sample_value(name, labels) or 0.0

            filtered = "tailhook_webhook_events_filtered_total"
            assert value(filtered, webhook="soc", event_type="hit") == 3
            assert value(filtered, webhook="soc", event_type="system") == 0
            assert value(filtered, webhook="archive", event_type="hit") == 0
            assert value("tailhook_webhook_events_delivered_total", webhook="soc",
                         event_type="hit") == 2  # fmt: skip
            agent.spool.update_gauges()  # type: ignore[union-attr]
            assert value("tailhook_webhook_backlog_events", webhook="soc") == 0
        archived = [obj for request in other.requests for obj in request.json()]
    sent = [obj for request in receiver.requests for obj in request.json()]
    assert [obj.get("id", obj.get("notification_type")) for obj in sent] == [
        ["hit-1"],
        ["hit-5"],
        "create_user",
    ]
    assert len(archived) == len(lines)


@pytest.mark.slow
def test_test_webhook_sends_a_json_array_of_envelopes_whatever_the_body(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\nconsole_url: https://us1.my.wallarm.com\n"
        f"webhooks:\n  - name: soc\n    url: {receiver.url}\n"
        "    events: [hit, vulnerability, system, scope]\n"
        f"    payload: wallarm\n    body: ndjson\n    signing: {{secret: {SECRET}}}\n"
        "wallarm: {client_name: acme}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "agent", "test-webhook", "-c", str(config), "soc"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [request] = receiver.requests
    assert request.headers["Content-Type"] == "application/json"
    objects = Webhook(SECRET).verify(request.body, dict(request.headers))
    assert [obj["summary"] for obj in objects] == [
        "[Test message] [Wallarm] New hit detected",
        "[Test message] [Wallarm] New vulnerability detected",
        "[Test message] [Wallarm] New user added",
        "[Test message] [Wallarm] Network perimeter has changed",
    ]
    assert_valid_envelopes(objects)
    assert {(o["details"]["client_name"], o["details"]["cloud"]) for o in objects} == {
        ("acme", "US")
    }
    assert objects[0]["details"]["hit"]["id"] == ["tailhook-test-message"]


def test_a_config_without_payload_keeps_every_webhook_classic() -> None:
    hook = WebhookConfig("w", "https://h.example/", frozenset({"hit"}))
    assert (hook.payload, hook.body, hook.filter.given) == ("classic", "json_array", False)
    assert Config().wallarm == WallarmConfig(None, None)
