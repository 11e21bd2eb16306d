"""Real filter nodes on loopback, each once blocking (``SecRuleEngine On``) and once
detecting only, with the OWASP CRS, and the real ``tailhook run`` tailing both JSON audit
logs with ``format: modsecurity``: Debian's nginx with libmodsecurity 3, and Debian's
apache2 with ModSecurity 2.9 (``mod_security2``, built with yajl, so it writes
``SecAuditLogFormat JSON``: ModSecurity 2's layout). One server at a time: the fixtures
are per module and per server.

Attacks of several CRS families and clean requests go to each node
(`tests.support.attacks`); the loopback receiver must get exactly one hit per attacked
request with the right ``type``, ``block_status``, ``point``, ``parameter``,
``payloads``, client address and response status, and nothing for a clean request.
Without a server and its ModSecurity module its tests skip, except in CI (``CI`` set),
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
from tests.support.waf import Kind, WafNode

pytestmark = pytest.mark.slow

XSS = ["<script>alert(1)</script>"]
#: A JSON body's field: ``json.q`` in libmodsecurity 3 (nginx), ``q`` in ModSecurity 2.
EXPECTED = {
    "nginx": {
        **COMMON_EXPECTED,
        "json": Expected("xss", ["post", "json.q"], "POST_json.q_value", XSS),
    },
    "apache": {**COMMON_EXPECTED, "json": Expected("xss", ["post", "q"], "POST_q_value", XSS)},
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def server(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def blocking(server: Kind) -> Iterator[WafNode]:
    with WafNode(server, "On") as node:
        yield node


@pytest.fixture(scope="module")
def detecting(server: Kind) -> Iterator[WafNode]:
    with WafNode(server, "DetectionOnly") as node:
        yield node


@pytest.fixture(scope="module")
def tailhook(
    blocking: WafNode, detecting: WafNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AgentProcess, Receiver]]:
    with tailhook_tailing([blocking, detecting], tmp_path_factory.mktemp("tailhook")) as running:
        yield running


def test_a_blocking_node_gets_one_blocked_hit_per_attack_and_none_for_clean_requests(
    server: Kind, blocking: WafNode, detecting: WafNode, tailhook: tuple[AgentProcess, Receiver]
) -> None:
    agent, receiver = tailhook
    responses, hits = deliver(blocking, receiver, "blocking")
    check_hits(blocking, responses, hits, EXPECTED[server])
    valid_hits(hits)
    read_everything(agent, [blocking, detecting])


def test_a_detecting_node_gets_one_monitored_hit_per_attack_and_none_for_clean_requests(
    server: Kind, blocking: WafNode, detecting: WafNode, tailhook: tuple[AgentProcess, Receiver]
) -> None:
    agent, receiver = tailhook
    responses, hits = deliver(detecting, receiver, "detecting")
    check_hits(detecting, responses, hits, EXPECTED[server])
    valid_hits(hits)
    read_everything(agent, [blocking, detecting])
