"""Sinks deliver batches from the spool. ``webhook`` is the one sink: batching, retry
policy (``retry``), signing (``signing``), the HTTP transport (``transport``, with its
deadline ``Watchdog`` in ``deadline``), redaction of kept answers (``redaction``) and the
dead-letter files (``deadletter``), each in its own module."""
