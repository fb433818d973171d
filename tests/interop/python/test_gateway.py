"""A realistic session through the gateway with the generated Python client."""

import hashlib

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import wait_for_audit_events
from palisade.compliance.v1 import audit_pb2
from palisade.identity.v1 import tenant_pb2
from palisade.observability.v1 import status_pb2


def rich_status(error):
    """The google.rpc.Status of a failed call, with its details unpacked by type."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status details on {error}"
    details = {}
    for any_detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                details[kind.__name__] = message
    return status, details


def test_create_get_and_list_a_tenant(tenants, operator):
    created = tenants.CreateTenant(
        tenant_pb2.CreateTenantRequest(
            tenant_id="globex",
            tenant=tenant_pb2.Tenant(
                display_name="Globex", plan=tenant_pb2.PLAN_ENTERPRISE, region="eu-west-1"
            ),
        ),
        metadata=operator,
    )
    assert created.name == "tenants/globex"
    assert created.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert created.region == "eu-west-1"
    assert created.create_time.seconds > 0

    fetched = tenants.GetTenant(tenant_pb2.GetTenantRequest(name="tenants/globex"), metadata=operator)
    assert fetched == created

    listed = tenants.ListTenants(
        tenant_pb2.ListTenantsRequest(filter='plan = "PLAN_ENTERPRISE" AND region = "eu-west-1"'),
        metadata=operator,
    )
    assert [t.name for t in listed.tenants] == ["tenants/globex"]
    assert listed.next_page_token == ""


def test_bad_input_carries_field_violations(tenants, operator):
    with pytest.raises(grpc.RpcError) as failure:
        tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(
                tenant_id="Not_OK", tenant=tenant_pb2.Tenant(display_name=" ")
            ),
            metadata=operator,
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status, details = rich_status(failure.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    fields = sorted(v.field for v in details["BadRequest"].field_violations)
    assert fields == ["tenant.display_name", "tenant_id"]
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"
    assert details["ErrorInfo"].domain == "palisade.dev"


def test_missing_tenant_is_not_found_with_error_info(tenants, operator):
    with pytest.raises(grpc.RpcError) as failure:
        tenants.GetTenant(tenant_pb2.GetTenantRequest(name="tenants/nobody"), metadata=operator)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    _, details = rich_status(failure.value)
    assert details["ErrorInfo"].reason == "NOT_FOUND"
    assert details["ErrorInfo"].metadata["resource"] == "tenants/nobody"


def test_calls_without_a_credential_are_unauthenticated(tenants):
    with pytest.raises(grpc.RpcError) as failure:
        tenants.ListTenants(tenant_pb2.ListTenantsRequest())
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _, details = rich_status(failure.value)
    assert details["ErrorInfo"].reason == "UNAUTHENTICATED"


def test_the_audit_log_exports_as_a_verifiable_hash_chain(tenants, audit, operator):
    for tenant_id in ("initech", "umbrella"):
        tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(
                tenant_id=tenant_id, tenant=tenant_pb2.Tenant(display_name=tenant_id.title())
            ),
            metadata=operator,
        )
    assert wait_for_audit_events(audit, operator, "tenants/initech", 1)

    stream = audit.ExportAuditEvents(
        audit_pb2.ExportAuditEventsRequest(parent="tenants/initech"), metadata=operator
    )
    events = list(stream)
    assert [e.action for e in events] == ["identity.tenants.create"]
    assert events[0].name.startswith("tenants/initech/auditEvents/")
    assert events[0].resource == "tenants/initech"
    assert events[0].actor.tenant_id == "system"

    # The chain is checkable from any language: hash = SHA-256(previous_hash ‖ canonical).
    previous = bytes(32)
    for sequence, event in enumerate(events, start=1):
        assert event.sequence == sequence
        assert event.previous_hash == previous
        canonical = audit_pb2.AuditEvent()
        canonical.CopyFrom(event)
        for field in ("name", "sequence", "hash", "previous_hash", "origin"):
            canonical.ClearField(field)
        digest = hashlib.sha256(previous + canonical.SerializeToString(deterministic=True))
        assert event.hash == digest.digest()
        previous = event.hash

    filtered = audit.ExportAuditEvents(
        audit_pb2.ExportAuditEventsRequest(
            parent="tenants/initech", filter='action = "identity.tenants.delete"'
        ),
        metadata=operator,
    )
    assert list(filtered) == []


def test_a_bad_export_fails_before_the_stream_starts(audit, operator):
    stream = audit.ExportAuditEvents(
        audit_pb2.ExportAuditEventsRequest(parent="initech"), metadata=operator
    )
    with pytest.raises(grpc.RpcError) as failure:
        next(stream)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, details = rich_status(failure.value)
    assert [v.field for v in details["BadRequest"].field_violations] == ["parent"]


def test_the_status_page_is_public(status):
    report = status.GetStatus(status_pb2.GetStatusRequest())
    assert report.overall == status_pb2.SERVING_STATE_SERVING
    assert [c.component for c in report.components] == [
        "identity",
        "compliance",
        "observability",
        "gateway",
    ]
