"""The routes of a config: for each enabled webhook, the events it takes (its types and
its ``filter``) and how its bodies are made (its ``payload``, ``body`` and, for
``payload: wallarm``, the identity of the config's ``wallarm`` section).

The agent hands them to the spool at start and at every reload
(``Spool.configure_webhooks``): filters then apply to the events accepted after it, and
forms to the batches formed after it (a batch in flight keeps the form it was formed
in, so a retry sends the same bytes).
"""

from __future__ import annotations

from agent.config import Config, FilterConfig, WebhookConfig
from agent.formats.wallarm import identity_of
from agent.spool.routes import EventFilter, Form, Route


def routes_of(config: Config) -> dict[str, Route]:
    """The route of every enabled webhook, by name."""
    return {hook.name: route_of(config, hook) for hook in config.webhooks if hook.enabled}


def route_of(config: Config, hook: WebhookConfig) -> Route:
    return Route(hook.events, event_filter(hook.filter), form_of(config, hook))


def form_of(config: Config, hook: WebhookConfig) -> Form:
    """How ``hook``'s bodies are made under ``config``."""
    if hook.payload == "classic":
        return Form("classic", hook.body)
    wallarm = config.wallarm
    identity = identity_of(wallarm.client_name, wallarm.cloud, config.console_url)
    return Form(hook.payload, hook.body, identity)


def event_filter(given: FilterConfig) -> EventFilter | None:
    """The compiled filter; None when no condition is given (every event passes)."""
    if not given.given:
        return None
    return EventFilter(given.block_status, given.attack_types, given.domains, given.threats)
