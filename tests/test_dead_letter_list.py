"""``tailhook dead-letter list``: says when there is nothing, ``--json`` for scripts,
``--show ID`` for one batch's answer and events; the real command on real files."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from agent.sinks.deadletter import dead_letter_path, write_dead_letter
from tests.test_end_to_end import tailhook

CONFIG = """\
state_dir: {state}
webhooks:
  - {{name: soc, url: "http://127.0.0.1:9/soc", events: [hit]}}
  - {{name: archive, url: "http://127.0.0.1:9/archive", events: [hit, system]}}
"""


def events(*ids: int) -> list[dict[str, object]]:
    return [{"object_type": "hit", "id": [f"hit-{n}"], "payloads": [f"'or {n}={n}--"]} for n in ids]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir(mode=0o700)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    return path


def dead_letter(
    config: Path, webhook: str, webhook_id: str, body: object, **answer: object
) -> None:
    write_dead_letter(
        config.parent / "state",
        webhook,
        webhook_id,
        str(answer.get("reason", "rejected")),
        answer.get("status", 400),  # type: ignore[arg-type]
        str(answer.get("response", "")).encode(),
        orjson.dumps(body),
    )


def stored(config: Path, webhook: str) -> list[dict[str, object]]:
    path = dead_letter_path(config.parent / "state", webhook)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_nothing_to_list_is_said(config: Path) -> None:
    one = tailhook("dead-letter", "list", "-c", str(config), "soc")
    assert (one.returncode, one.stdout, one.stderr) == (0, "no dead-lettered batches for soc\n", "")
    every = tailhook("dead-letter", "list", "-c", str(config))
    assert every.returncode == 0
    assert every.stdout == "no dead-lettered batches for any webhook\n"
    # With --json, stdout stays JSON (here: empty); the words go to stderr.
    as_json = tailhook("dead-letter", "list", "--json", "-c", str(config), "soc")
    assert (as_json.returncode, as_json.stdout) == (0, "")
    assert as_json.stderr == "no dead-lettered batches for soc\n"


def test_json_prints_each_batch_as_stored(config: Path) -> None:
    dead_letter(config, "soc", "msg_1", events(1, 2), response='{"error": "bad field"}')
    dead_letter(config, "archive", "msg_2", events(3), reason="expired", status=None)
    dead_letter(config, "soc", "msg_3", events(4))
    listed = tailhook("dead-letter", "list", "--json", "-c", str(config))
    assert listed.returncode == 0, listed.stderr
    batches = [json.loads(line) for line in listed.stdout.splitlines()]
    assert batches == stored(config, "soc") + stored(config, "archive")
    assert [batch["webhook_id"] for batch in batches] == ["msg_1", "msg_3", "msg_2"]
    assert batches[0]["events"] == events(1, 2)
    only = tailhook("dead-letter", "list", "--json", "-c", str(config), "archive")
    assert [json.loads(line) for line in only.stdout.splitlines()] == stored(config, "archive")


def test_show_prints_one_batchs_answer_and_events(config: Path) -> None:
    answer = '{"error": "field \\"x\\" is bad"}\n\x1b[31mred\x9b'  # from the receiver
    dead_letter(config, "soc", "msg_1", events(1), response="first")
    dead_letter(config, "soc", "msg_2", events(2, 3), response=answer)
    shown = tailhook("dead-letter", "list", "--show", "msg_2", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    [summary, response, heading, *lines] = shown.stdout.splitlines()
    [entry] = [entry for entry in stored(config, "soc") if entry["webhook_id"] == "msg_2"]
    assert summary == f"{entry['time']}  soc  msg_2  rejected  status=400  events=2"
    # The answer is quoted as a JSON string: a receiver's escape sequences stay inert.
    assert response.startswith("response: ")
    assert json.loads(response.removeprefix("response: ")) == answer
    assert not any(char == "\x1b" or 0x7F <= ord(char) <= 0x9F for char in shown.stdout)
    assert heading == "events (2, one JSON object a line):"
    assert [json.loads(line) for line in lines] == events(2, 3)

    as_json = tailhook("dead-letter", "list", "--show", "msg_2", "--json", "-c", str(config))
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [entry]


def test_show_of_an_unknown_batch_fails(config: Path) -> None:
    dead_letter(config, "soc", "msg_1", events(1))
    missing = tailhook("dead-letter", "list", "--show", "msg_9", "-c", str(config), "soc")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr == "tailhook: no dead-lettered batch msg_9 for soc\n"
    elsewhere = tailhook("dead-letter", "list", "--show", "msg_1", "-c", str(config), "archive")
    assert elsewhere.returncode == 1  # it is soc's, not archive's


def test_a_listing_line_per_batch(config: Path) -> None:
    dead_letter(config, "soc", "msg_1", events(1, 2))
    dead_letter(config, "archive", "msg_2", events(3), reason="expired", status=None)
    listed = tailhook("dead-letter", "list", "-c", str(config))
    assert listed.returncode == 0, listed.stderr
    [soc] = stored(config, "soc")
    [archive] = stored(config, "archive")
    assert listed.stdout.splitlines() == [
        f"{soc['time']}  soc  msg_1  rejected  status=400  events=2",
        f"{archive['time']}  archive  msg_2  expired  status=None  events=1",
    ]
