"""The spool: tailhook's one owner of durable state. See ``store`` for what it keeps."""

from agent.spool.segments import Batch, Checkpoint, NewSegment, new_webhook_id
from agent.spool.store import Spool

__all__ = ["Batch", "Checkpoint", "NewSegment", "Spool", "new_webhook_id"]
