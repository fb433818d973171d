"""A non-Rust service joins the mesh: a Python worker with its own certificate from the mesh CA
calls a component's own port directly over mutual TLS, with no gateway in between."""

import os
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from palisade.identity.v1 import tenant_pb2, tenant_pb2_grpc
from palisade.observability.v1 import status_pb2, status_pb2_grpc

CERTS = Path(os.environ.get("PALISADE_CERTS", "."))
PORT_BASE = int(os.environ.get("PALISADE_PORT_BASE", "0"))
OBSERVABILITY = f"127.0.0.1:{PORT_BASE + 3}"
IDENTITY = f"127.0.0.1:{PORT_BASE + 1}"


@pytest.fixture(scope="module")
def worker_credentials():
    """A certificate for `py-worker` issued by the dev CA (`palisade certs init` keeps the
    existing CA and component certificates and adds the new one)."""
    # Only its flags, as for the mesh (lib.sh): an exported `PALISADE_TRUST_DOMAIN` would
    # issue a certificate the mesh refuses.
    env = {name: value for name, value in os.environ.items() if not name.startswith("PALISADE_")}
    subprocess.run(
        [os.environ["PALISADE_BIN"], "certs", "init", "--dir", str(CERTS), "--component", "py-worker"],
        check=True,
        capture_output=True,
        env=env,
    )
    return grpc.ssl_channel_credentials(
        root_certificates=(CERTS / "ca.crt").read_bytes(),
        private_key=(CERTS / "py-worker.key").read_bytes(),
        certificate_chain=(CERTS / "py-worker.crt").read_bytes(),
    )


def direct_channel(address, component, credentials):
    # Component certificates name the component (DNS SAN), not the address dialled.
    return grpc.secure_channel(
        address, credentials, options=(("grpc.ssl_target_name_override", component),)
    )


def test_health_and_status_over_mtls(worker_credentials):
    with direct_channel(OBSERVABILITY, "observability", worker_credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        report = status_pb2_grpc.StatusServiceStub(channel).GetStatus(
            status_pb2.GetStatusRequest(), timeout=10
        )
        assert report.overall == status_pb2.SERVING_STATE_SERVING


def test_without_a_client_certificate_the_call_fails():
    server_only = grpc.ssl_channel_credentials(root_certificates=(CERTS / "ca.crt").read_bytes())
    with direct_channel(OBSERVABILITY, "observability", server_only) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_workload_certificate_cannot_speak_for_a_tenant(worker_credentials):
    # Tenant context metadata is trusted only from the gateway and mesh components.
    claimed = (("palisade-tenant-id", "system"), ("palisade-principal-id", "someone"),
               ("palisade-principal-type", "api-key"))
    with direct_channel(IDENTITY, "identity", worker_credentials) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            tenant_pb2_grpc.TenantServiceStub(channel).ListTenants(
                tenant_pb2.ListTenantsRequest(), metadata=claimed, timeout=10
            )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
