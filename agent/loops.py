"""The loop every source and sink thread runs: a step at a time, surviving failures.

A ``StateError`` (the spool cannot be written: a full disk, say) pauses the loop and is
logged once per outage as an ERROR, then once more when it ends; any other exception is
logged with its traceback and the loop goes on after a pause (as sentry-python's
background worker does). Nothing but a stop request ends the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.errors import StateError
from agent.telemetry import fields

log = logging.getLogger(__name__)

#: Pause after a failure that is not the input's or the receiver's.
RECOVERY_WAIT = 1.0


def run_until_stopped(
    step: Callable[[], bool],
    stop: threading.Event,
    what: str,
    context: dict[str, Any],
) -> None:
    """Call ``step`` until it returns False (each step checks ``stop`` itself, so a sink
    can go on draining after it is set); ``stop`` also ends the pauses after failures.

    ``what`` names the work for the log ("reading", "delivery"); ``context`` is the
    fields every log line carries (``source=...``, ``webhook=...``).
    """
    failing = False
    while True:
        try:
            if not step():
                return
        except StateError as exc:
            if stop.is_set():
                return  # the spool closes at shutdown; what was not kept is read again
            if not failing:
                log.error(
                    f"The spool cannot be written; {what} pauses until it can",
                    extra=fields(**context, error=str(exc)),
                )
            failing = True
            stop.wait(RECOVERY_WAIT)
            continue
        except Exception:
            log.exception(f"Unexpected error in {what}; it goes on", extra=fields(**context))
            stop.wait(RECOVERY_WAIT)
            continue
        if failing:
            log.warning(f"{what.capitalize()} resumed", extra=fields(**context))
            failing = False
