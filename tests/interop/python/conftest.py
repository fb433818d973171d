"""Fixtures for the generated-client tests: channels to a running `palisade dev`.

`tests/interop/python.sh` generates the client into PYTHONPATH, starts the mesh and exports
PALISADE_GATEWAY, PALISADE_API_KEY, PALISADE_CERTS, PALISADE_PORT_BASE and PALISADE_BIN.
"""

import os
import time

import grpc
import pytest

from palisade.compliance.v1 import audit_pb2, audit_pb2_grpc
from palisade.identity.v1 import tenant_pb2_grpc
from palisade.observability.v1 import status_pb2_grpc


def env(name):
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run tests/interop/python.sh", returncode=2)
    return value


@pytest.fixture(scope="session")
def gateway():
    """A plaintext (h2c) channel to the gateway's public port, as any outside client connects."""
    with grpc.insecure_channel(env("PALISADE_GATEWAY")) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


@pytest.fixture(scope="session")
def operator():
    """Call metadata carrying the bootstrap operator's API key: the tenant context is `system`."""
    return (("authorization", f"ApiKey {env('PALISADE_API_KEY')}"),)


@pytest.fixture
def tenants(gateway):
    return tenant_pb2_grpc.TenantServiceStub(gateway)


@pytest.fixture
def audit(gateway):
    return audit_pb2_grpc.AuditServiceStub(gateway)


@pytest.fixture
def status(gateway):
    return status_pb2_grpc.StatusServiceStub(gateway)


def wait_for_audit_events(audit, operator, parent, count, timeout=10.0):
    """Audit events arrive asynchronously (outbox → relay → compliance): poll until they do."""
    deadline = time.monotonic() + timeout
    while True:
        page = audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(parent=parent), metadata=operator
        )
        if len(page.audit_events) >= count or time.monotonic() > deadline:
            return list(page.audit_events)
        time.sleep(0.1)
