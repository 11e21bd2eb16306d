"""The real-WAF test support (`tests.support.waf`): a node that cannot start fails the
test in CI and skips it elsewhere, and a node stops when told, leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import waf


@pytest.fixture
def no_crs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(waf, "CRS_RULES", tmp_path / "missing")


@pytest.mark.usefixtures("no_crs")
def test_a_node_without_its_packages_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must install them"):
        waf.WafNode("nginx", "On").start()


@pytest.mark.usefixtures("no_crs")
def test_a_node_without_its_packages_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="modsecurity-crs"):
        waf.WafNode("apache", "On").start()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nginx", "apache"])
def test_a_node_answers_then_stops_and_leaves_nothing(kind: waf.Kind) -> None:
    with waf.WafNode(kind, "DetectionOnly") as node:
        assert node.get("/ready").status == 200
        node.wait_for_paths(["/ready"])
        process = node.process
    assert process is not None and process.poll() is not None
    assert not node.home.exists()
    with pytest.raises(OSError):
        node.get("/ready")
