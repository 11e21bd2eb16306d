"""What a reload changes: an old and a new config in, the actions to take out.

``plan_reload`` is a pure function, so every case of the integration lifecycle is a
unit test without threads or files. Webhooks and sources are known by name:

==========================  ===================================================
old webhook -> new webhook  actions
==========================  ===================================================
enabled -> same config      nothing: its queue, order and ``webhook-id``\\s stay
enabled -> changed          replace its sink (the queue and the batch in flight
                            stay; the new sink sends them)
enabled -> disabled         stop its sink, drop its backlog, announce
                            ``disable_integration``
enabled -> gone             stop its sink, drop its backlog, announce
                            ``delete_integration``
disabled -> gone            announce ``delete_integration``
disabled / gone -> enabled  start a sink: it takes what arrives from now on
==========================  ===================================================

A source whose settings changed in any way is replaced: stopped, then started again
from its checkpoints, so no line is lost or read twice; so is every source when
``console_url`` changes (it is part of the mapping). Settings that only a restart can
change (``state_dir``, ``metrics.listen``, ``spool.max_bytes``) keep their running
value; the plan names them so the reload can say so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.config import Config, SourceConfig, WebhookConfig

#: Announcements (system actions, CONTRACT §6) of a webhook's lifecycle.
DISABLED, DELETED, BROKEN = "disable_integration", "delete_integration", "integration_broken"


@dataclass(frozen=True)
class Announcement:
    action: str  # DISABLED, DELETED or BROKEN
    webhook: str


@dataclass(frozen=True)
class Plan:
    """The actions of one reload, in the order they are taken."""

    config: Config  # the config to run: the new one, restart-only settings kept
    stop_sources: tuple[str, ...] = ()  # removed or replaced (stopped first)
    stop_sinks: tuple[str, ...] = ()  # removed, disabled or replaced
    start_sinks: tuple[WebhookConfig, ...] = ()  # added, re-enabled or replaced
    start_sources: tuple[SourceConfig, ...] = ()  # added or replaced
    announcements: tuple[Announcement, ...] = ()
    kept_until_restart: tuple[str, ...] = ()  # restart-only settings that changed

    @property
    def changes_anything(self) -> bool:
        return bool(self.stop_sources or self.stop_sinks or self.start_sinks or self.start_sources)


def plan_reload(old: Config, new: Config) -> Plan:
    """The actions that take the agent running ``old`` to ``new``."""
    new, kept = _keep_restart_only(old, new)
    old_hooks = {hook.name: hook for hook in old.webhooks}
    new_hooks = {hook.name: hook for hook in new.webhooks}
    stop_sinks: list[str] = []
    start_sinks: list[WebhookConfig] = []
    announcements: list[Announcement] = []
    for name, before in old_hooks.items():
        after = new_hooks.get(name)
        if after is None:
            announcements.append(Announcement(DELETED, name))
        elif before.enabled and not after.enabled:
            announcements.append(Announcement(DISABLED, name))
        if before.enabled and (after is None or after != before):
            stop_sinks.append(name)
    for name, hook in new_hooks.items():
        previous = old_hooks.get(name)
        if hook.enabled and (previous is None or not previous.enabled or previous != hook):
            start_sinks.append(hook)

    old_sources = {source.name: source for source in old.sources}
    new_sources = {source.name: source for source in new.sources}
    mapping_changed = old.console_url != new.console_url
    stop_sources = [
        name
        for name, before in old_sources.items()
        if mapping_changed or new_sources.get(name) != before
    ]
    start_sources = [
        after
        for name, after in new_sources.items()
        if mapping_changed or old_sources.get(name) != after
    ]
    return Plan(
        config=new,
        stop_sources=tuple(stop_sources),
        stop_sinks=tuple(stop_sinks),
        start_sinks=tuple(start_sinks),
        start_sources=tuple(start_sources),
        announcements=tuple(announcements),
        kept_until_restart=kept,
    )


def _keep_restart_only(old: Config, new: Config) -> tuple[Config, tuple[str, ...]]:
    """``new`` with the settings only a restart can change set back to ``old``'s, and
    the names of those that differed."""
    kept = []
    if new.state_dir != old.state_dir:
        kept.append("state_dir")
    if new.metrics != old.metrics:
        kept.append("metrics.listen")
    if new.spool.max_bytes != old.spool.max_bytes:
        kept.append("spool.max_bytes")
    running = replace(
        new,
        state_dir=old.state_dir,
        metrics=old.metrics,
        spool=replace(new.spool, max_bytes=old.spool.max_bytes),
    )
    return running, tuple(kept)


def announced_to(config: Config, announcement: Announcement) -> tuple[str, ...]:
    """The webhooks an announcement goes to: every other enabled webhook that takes
    ``system`` events."""
    return tuple(
        hook.name
        for hook in config.webhooks
        if hook.enabled and "system" in hook.events and hook.name != announcement.webhook
    )
