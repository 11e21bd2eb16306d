"""The README's notifications are what a receiver gets: the demo's four lines mapped,
kept as the spool keeps them, and made into each payload's body by the webhook's form.
Edit the mapping or the envelope and this fails until the README says the same."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.demo import SAMPLE_LINES
from agent.formats import MappingContext, load_format
from agent.formats.wallarm import Identity, vulnerability_fields
from agent.pipeline import decode_line
from agent.spool.routes import Form

README = Path(__file__).resolve().parent.parent / "README.md"
NODE = Identity("node-7", "EU")


def readme_example(payload: str) -> Any:
    """The JSON block under the README's ``<summary><code>payload: PAYLOAD</code>``."""
    text = README.read_text(encoding="utf-8")
    found = re.search(
        rf"<summary><code>payload: {payload}</code>.*?</summary>\s*```json\n(.*?)\n```",
        text,
        re.DOTALL,
    )
    assert found is not None, f"README has no example for payload: {payload}"
    return orjson.loads(found.group(1))


def received(form: Form) -> list[Any]:
    """What the receiver parses out of one body of the four sample events."""
    fmt = load_format("native")
    ctx = MappingContext()
    parts = []
    for line in SAMPLE_LINES:
        obj = decode_line(line)
        kind, notification = fmt.convert(obj, ctx)
        fields = vulnerability_fields(obj) if kind == "vulnerability" else None
        parts.append(form.wrap(orjson.dumps(notification), fields))
    body = form.join(parts)
    if form.body == "ndjson":
        return [orjson.loads(one) for one in body.splitlines()]
    return orjson.loads(body)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("payload", "form"),
    [
        ("classic", Form("classic", "json_array")),
        ("wallarm", Form("wallarm", "ndjson", NODE)),
    ],
)
def test_readme_shows_what_the_receiver_gets(payload: str, form: Form) -> None:
    example = readme_example(payload)
    got = received(form)
    assert example == got
    # every kind is shown: the four sample lines are one hit, vulnerability, system, scope
    assert len(example) == 4
