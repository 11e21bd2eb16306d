"""deploy/prometheus: ``promtool check rules`` passes, ``promtool test rules`` passes,
every alert has a unit test where it fires and one where it stays silent, and the
PrometheusRule in deploy/kubernetes carries exactly the same groups."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent_process import REPO

RULES = REPO / "deploy" / "prometheus" / "tailhook-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tailhook-rules.test.yml"
PROMETHEUS_RULE = REPO / "deploy" / "kubernetes" / "prometheusrule.yaml"
#: What the rules must cover (issue #9), by alert name.
REQUIRED_ALERTS = {
    "TailhookDown",
    "TailhookWebhookFailing",
    "TailhookBacklogGrowing",
    "TailhookOldestEventTooOld",
    "TailhookDeadLetters",
    "TailhookRejectedLines",
    "TailhookSpoolNearlyFull",
    "TailhookSourceErrors",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (Debian's prometheus package)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    return found


def load(path: Path) -> Any:
    with path.open() as stream:
        return yaml.safe_load(stream)


def alert_names() -> list[str]:
    return [rule["alert"] for group in load(RULES)["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS.parent,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """promtool compares labels and annotations: the tests above could fail."""
    shutil.copy(RULES, tmp_path / RULES.name)
    text = RULE_TESTS.read_text().replace("severity: critical", "severity: warning", 1)
    (tmp_path / RULE_TESTS.name).write_text(text)
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode != 0
    assert "TailhookDown" in done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    names = alert_names()
    assert set(names) >= REQUIRED_ALERTS
    assert len(names) == len(set(names))
    cases: dict[str, set[bool]] = defaultdict(set)
    for test in load(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    assert {name: cases[name] for name in names} == {name: {True, False} for name in names}


def test_every_alert_says_what_happened_and_how_bad() -> None:
    for group in load(RULES)["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_the_prometheusrule_carries_the_same_groups() -> None:
    resource = load(PROMETHEUS_RULE)
    assert (resource["apiVersion"], resource["kind"]) == (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
    )
    assert resource["spec"] == load(RULES)
