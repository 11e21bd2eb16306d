"""Shared fixtures: loopback receivers and misbehaving peers from `tests.support`.

Every fixture binds 127.0.0.1 only and closes its sockets and threads at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import netfaults
from tests.support.receiver import Receiver, TLSMaterial, make_tls_material, server_context


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A plain-HTTP receiver answering 200; `receiver.answer_with(...)` to script it."""
    with Receiver() as server:
        yield server


@pytest.fixture
def tls_material(tmp_path: Path) -> TLSMaterial:
    """A trustme CA, server and client certificates, and another CA's client cert."""
    return make_tls_material(tmp_path / "tls")


@pytest.fixture
def https_receiver(tls_material: TLSMaterial) -> Iterator[Receiver]:
    """An HTTPS receiver with a certificate for 127.0.0.1 signed by `tls_material.ca_cert`."""
    with Receiver(tls=server_context(tls_material)) as server:
        yield server


@pytest.fixture
def mtls_receiver(tls_material: TLSMaterial) -> Iterator[Receiver]:
    """An HTTPS receiver that requires a client certificate signed by the same CA."""
    with Receiver(tls=server_context(tls_material), require_client_cert=True) as server:
        yield server


@pytest.fixture
def silent_server() -> Iterator[netfaults.SilentServer]:
    """Accepts and reads, never answers."""
    with netfaults.SilentServer() as server:
        yield server


@pytest.fixture
def trickling_server() -> Iterator[netfaults.TricklingServer]:
    """Sends status and headers, then one body byte per second, forever."""
    with netfaults.TricklingServer() as server:
        yield server


@pytest.fixture
def full_backlog() -> Iterator[netfaults.FullBacklogListener]:
    """A listener whose accept queue is full: a new connect hangs until its timeout."""
    with netfaults.FullBacklogListener() as listener:
        yield listener


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test."""
    with netfaults.refusing_port() as port:
        yield port
