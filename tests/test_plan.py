"""``plan_reload`` as a pure diff: every case of the integration lifecycle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import (
    Config,
    FileSourceConfig,
    MetricsConfig,
    SocketSourceConfig,
    SpoolConfig,
    WebhookConfig,
)
from agent.plan import (
    BROKEN,
    DELETED,
    DISABLED,
    Announcement,
    announced_to,
    plan_reload,
)

ALL = frozenset({"hit", "vulnerability", "system", "scope"})


def hook(name: str, **settings: object) -> WebhookConfig:
    base = WebhookConfig(name=name, url=f"https://{name}.example.com/", events=ALL)
    return replace(base, **settings)  # type: ignore[arg-type]


def source(name: str, **settings: object) -> FileSourceConfig:
    base = FileSourceConfig(name=name, paths=(f"/var/log/{name}/*.log",))
    return replace(base, **settings)  # type: ignore[arg-type]


def config(*webhooks: WebhookConfig, sources: tuple[object, ...] = ()) -> Config:
    return Config(state_dir=Path("/var/lib/t"), webhooks=webhooks, sources=sources)  # type: ignore[arg-type]


def test_the_same_config_changes_nothing() -> None:
    old = config(hook("a"), hook("b", enabled=False), sources=(source("waf"),))
    plan = plan_reload(old, replace(old))
    assert not plan.changes_anything
    assert plan.announcements == () and plan.kept_until_restart == ()
    assert plan.config == old


def test_an_added_webhook_starts_and_is_not_announced() -> None:
    plan = plan_reload(config(hook("a")), config(hook("a"), hook("b")))
    assert [h.name for h in plan.start_sinks] == ["b"]
    assert plan.stop_sinks == () and plan.announcements == ()


@pytest.mark.parametrize(
    "change",
    [
        {"url": "https://elsewhere.example.com/"},
        {"headers": (("Authorization", "Bearer new"),)},
        {"events": frozenset({"hit"})},
        {"request_timeout": 3.0},
    ],
    ids=["url", "headers", "events", "timeout"],
)
def test_an_updated_webhook_is_replaced_and_not_announced(change: dict[str, object]) -> None:
    plan = plan_reload(config(hook("a"), hook("b")), config(hook("a", **change), hook("b")))
    assert plan.stop_sinks == ("a",)
    assert [h for h in plan.start_sinks] == [hook("a", **change)]
    assert plan.announcements == ()


def test_disabling_stops_the_sink_and_announces_it() -> None:
    plan = plan_reload(config(hook("a"), hook("b")), config(hook("a", enabled=False), hook("b")))
    assert plan.stop_sinks == ("a",) and plan.start_sinks == ()
    assert plan.announcements == (Announcement(DISABLED, "a"),)


def test_re_enabling_starts_a_sink_and_is_not_announced() -> None:
    plan = plan_reload(config(hook("a", enabled=False)), config(hook("a")))
    assert [h.name for h in plan.start_sinks] == ["a"]
    assert plan.stop_sinks == () and plan.announcements == ()


def test_deleting_an_enabled_webhook_stops_it_and_announces_it() -> None:
    plan = plan_reload(config(hook("a"), hook("b")), config(hook("b")))
    assert plan.stop_sinks == ("a",)
    assert plan.announcements == (Announcement(DELETED, "a"),)


def test_deleting_a_disabled_webhook_announces_it_and_stops_nothing() -> None:
    plan = plan_reload(config(hook("a", enabled=False), hook("b")), config(hook("b")))
    assert plan.stop_sinks == ()
    assert plan.announcements == (Announcement(DELETED, "a"),)


def test_a_disabled_webhook_edited_while_disabled_starts_nothing() -> None:
    old = config(hook("a", enabled=False))
    plan = plan_reload(old, config(hook("a", enabled=False, url="https://x.example.com/")))
    assert not plan.changes_anything and plan.announcements == ()


def test_a_renamed_webhook_is_a_deletion_and_an_addition() -> None:
    plan = plan_reload(config(hook("a")), config(hook("a2")))
    assert plan.stop_sinks == ("a",) and [h.name for h in plan.start_sinks] == ["a2"]
    assert plan.announcements == (Announcement(DELETED, "a"),)


def test_sources_are_replaced_when_anything_in_them_changes() -> None:
    waf, socket = source("waf"), SocketSourceConfig(name="sock", path="/run/t/s.sock")
    old = config(hook("a"), sources=(waf, socket))
    new = config(hook("a"), sources=(source("waf", format="modsecurity"), socket, source("new")))
    plan = plan_reload(old, new)
    assert plan.stop_sources == ("waf",)
    assert [s.name for s in plan.start_sources] == ["waf", "new"]
    assert plan.stop_sinks == () and plan.start_sinks == ()


def test_a_removed_source_stops() -> None:
    plan = plan_reload(
        config(sources=(source("waf"), source("old"))), config(sources=(source("waf"),))
    )
    assert plan.stop_sources == ("old",) and plan.start_sources == ()


def test_a_new_console_url_restarts_every_source_as_it_is_part_of_the_mapping() -> None:
    old = config(hook("a"), sources=(source("waf"), source("b")))
    plan = plan_reload(old, replace(old, console_url="https://us1.my.wallarm.com"))
    assert plan.stop_sources == ("waf", "b")
    assert [s.name for s in plan.start_sources] == ["waf", "b"]


def test_settings_that_need_a_restart_keep_their_running_value() -> None:
    old = replace(config(hook("a")), spool=SpoolConfig(max_bytes=10 << 20))
    new = replace(
        old,
        state_dir=Path("/elsewhere"),
        metrics=MetricsConfig(host="0.0.0.0", port=9999),
        spool=SpoolConfig(max_bytes=20 << 20, when_full="drop_oldest"),
        shutdown_timeout=30.0,
    )
    plan = plan_reload(old, new)
    assert plan.kept_until_restart == ("state_dir", "metrics.listen", "spool.max_bytes")
    assert plan.config.state_dir == old.state_dir
    assert plan.config.metrics == old.metrics
    assert plan.config.spool == SpoolConfig(max_bytes=10 << 20, when_full="drop_oldest")
    assert plan.config.shutdown_timeout == 30.0  # the rest is live
    assert not plan.changes_anything


def test_announcements_go_to_every_other_enabled_webhook_taking_system_events() -> None:
    running = config(
        hook("broken"),
        hook("soc"),
        hook("hits-only", events=frozenset({"hit"})),
        hook("off", enabled=False),
        hook("archive", events=frozenset({"system"})),
    )
    assert announced_to(running, Announcement(BROKEN, "broken")) == ("soc", "archive")
    assert announced_to(running, Announcement(DELETED, "gone")) == ("broken", "soc", "archive")
