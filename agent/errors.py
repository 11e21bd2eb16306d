"""tailhook's error tree.

    TailhookError
     ├── ConfigError          the config file is invalid; carries every problem with its YAML path
     ├── SchemaError          a JSON Schema shipped with tailhook cannot be loaded or compiled
     ├── RejectedLine         one input line cannot become a notification; carries the reason
     │                        (a value of REJECT_REASONS) and the event type when known
     ├── StateError           the state directory cannot be opened or written (spool, checkpoints)
     │    └── StateDirInUse   another process holds ``state_dir`` (its lock); names that process
     ├── SourceError          a source cannot start: its socket path is taken by another file
     │                        or a live socket (the agent reports it at ``sources[N].path``)
     └── DeliveryError        one webhook request failed; ``kind`` is the metric label
                              (``timeout``, ``tls``, ``connection``)

Lower-layer errors are translated at the boundary that understands them and keep their
cause (``raise StateError(...) from exc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Outcomes of an input line other than ``accepted`` (CONTRACT §4, the metric label values).
REJECT_REASONS = (
    "invalid_json",
    "invalid_schema",
    "unknown_event",
    "line_too_long",
    "invalid_encoding",
)


class TailhookError(Exception):
    """Base of every error tailhook raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (``webhooks[1].url``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(TailhookError):
    """The config is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class SchemaError(TailhookError):
    """A schema file shipped with tailhook is missing or not a valid JSON Schema."""


class RejectedLine(TailhookError):
    """An input line that is not delivered; ``reason`` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str, event_type: str = "unknown") -> None:
        assert reason in REJECT_REASONS, reason
        self.reason = reason
        self.detail = detail
        self.event_type = event_type
        super().__init__(f"{reason}: {detail}")


class StateError(TailhookError):
    """The state directory cannot be used (permissions, a full disk, a damaged file)."""


class StateDirInUse(StateError):
    """Another process holds the ``state_dir`` lock: one agent per ``state_dir``."""

    def __init__(self, state_dir: object, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"state_dir {state_dir} is in use by {holder}")


class SourceError(TailhookError):
    """A source cannot start (its socket path holds another file, or a live socket)."""


class DeliveryError(TailhookError):
    """A webhook request failed before an HTTP status arrived.

    ``kind`` is ``timeout``, ``tls`` or ``connection``: the ``code`` label of
    ``tailhook_webhook_requests_total``. Every such failure is retryable.
    """

    def __init__(self, kind: str, message: str) -> None:
        assert kind in ("timeout", "tls", "connection"), kind
        self.kind = kind
        super().__init__(message)
