"""A real filter node: Debian's nginx with libmodsecurity 3 and the OWASP CRS on loopback,
once blocking (``SecRuleEngine On``) and once detecting only, and the real ``tailhook
run`` tailing both JSON audit logs with ``format: modsecurity``.

Attacks of several CRS families and clean requests go to each node
(`tests.support.attacks`); the loopback receiver must get exactly one hit per attacked
request with the right ``type``, ``block_status``, ``point``, ``parameter``,
``payloads``, client address and response status, and nothing for a clean request.
Without nginx and its ModSecurity module the tests skip, except in CI (``CI`` set),
where they fail: ``.ci/run`` installs Debian's packages.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agent_process import AgentProcess
from tests.support.attacks import (
    COMMON_EXPECTED,
    Expected,
    check_hits,
    deliver,
    read_everything,
    tailhook_tailing,
    valid_hits,
)
from tests.support.receiver import Receiver
from tests.support.waf import WafNode

pytestmark = pytest.mark.slow

#: libmodsecurity 3 names a JSON body's field ``json.q``.
EXPECTED = {
    **COMMON_EXPECTED,
    "json": Expected("xss", ["post", "json.q"], "POST_json.q_value", ["<script>alert(1)</script>"]),
}


@pytest.fixture(scope="module")
def blocking() -> Iterator[WafNode]:
    with WafNode("nginx", "On") as node:
        yield node


@pytest.fixture(scope="module")
def detecting() -> Iterator[WafNode]:
    with WafNode("nginx", "DetectionOnly") as node:
        yield node


@pytest.fixture(scope="module")
def tailhook(
    blocking: WafNode, detecting: WafNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AgentProcess, Receiver]]:
    with tailhook_tailing([blocking, detecting], tmp_path_factory.mktemp("tailhook")) as running:
        yield running


def test_a_blocking_node_gets_one_blocked_hit_per_attack_and_none_for_clean_requests(
    blocking: WafNode, detecting: WafNode, tailhook: tuple[AgentProcess, Receiver]
) -> None:
    agent, receiver = tailhook
    responses, hits = deliver(blocking, receiver, "blocking")
    check_hits(blocking, responses, hits, EXPECTED)
    valid_hits(hits)
    read_everything(agent, [blocking, detecting])


def test_a_detecting_node_gets_one_monitored_hit_per_attack_and_none_for_clean_requests(
    blocking: WafNode, detecting: WafNode, tailhook: tuple[AgentProcess, Receiver]
) -> None:
    agent, receiver = tailhook
    responses, hits = deliver(detecting, receiver, "detecting")
    check_hits(detecting, responses, hits, EXPECTED)
    valid_hits(hits)
    read_everything(agent, [blocking, detecting])
