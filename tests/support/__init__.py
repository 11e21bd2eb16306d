"""Real peers on loopback for tailhook's tests: a recording webhook receiver (HTTP,
HTTPS, mTLS) with scripted answers, TLS material from trustme, and network faults
(silence, trickling bodies, full accept queues, refused ports).

`receiver` owns the HTTP side and the TLS material; `netfaults` owns peers that fail
below HTTP. `tests/conftest.py` turns both into fixtures.
"""
