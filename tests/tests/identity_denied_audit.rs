//! Refused attempts at audited calls are in the audit log: an analyst's `CreateUser` (a
//! missing permission, refused by the policy layer) and a manager's grant of `admin` (refused
//! by the handler) are recorded in the caller's tenant, outcome `DENIED`, with the reason;
//! refused reads are not audited, and a wrong current password is recorded once, by its
//! handler, not twice.

mod common;
mod identity_kit;

use common::{audit_events_arrived, expect_code, new_tenant, reason};
use identity_kit::{PASSWORD, list_users, login, new_user, with_bearer};
use palisade_proto::palisade::{
    compliance::v1::{AuditEvent, Outcome},
    identity::v1::{
        AssignRoleRequest, ChangePasswordRequest, GetUserRequest, Plan,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Mesh, eventually};
use tonic::Code;

fn denied<'a>(events: &'a [AuditEvent], action: &str) -> Vec<&'a AuditEvent> {
    events
        .iter()
        .filter(|event| event.action == action && event.outcome() == Outcome::Denied)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_mutations_are_audited_as_denied() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        for (email, roles) in [
            ("ada@acme.example", &["admin"][..]),
            ("ann@acme.example", &["analyst"]),
            ("max@acme.example", &["manager"]),
            ("nel@acme.example", &[]),
        ] {
            users
                .create_user(mesh.as_operator(new_user("acme", email, roles)))
                .await?;
        }
        let (admin, _) = login(&mesh, "acme", "ada@acme.example").await?;
        let (analyst, _) = login(&mesh, "acme", "ann@acme.example").await?;
        let ann = users
            .list_users(with_bearer(list_users("acme"), &admin))
            .await?
            .into_inner()
            .users
            .into_iter()
            .find(|user| user.email == "ann@acme.example")
            .expect("ann is listed");

        let refused = users
            .create_user(with_bearer(
                new_user("acme", "eve@acme.example", &[]),
                &analyst,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::PermissionDenied)),
            "PERMISSION_DENIED"
        );
        // Refused by the handler rather than the policy layer: a role above the caller's.
        let (manager, _) = login(&mesh, "acme", "max@acme.example").await?;
        let escalation = users
            .assign_role(with_bearer(
                AssignRoleRequest {
                    name: ann.name.clone(),
                    role: "admin".into(),
                },
                &manager,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(escalation, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );
        // A refused read (a user without roles reading another) is not an audited call.
        let (nobody, _) = login(&mesh, "acme", "nel@acme.example").await?;
        let read = users
            .get_user(with_bearer(
                GetUserRequest {
                    name: ann.name.clone(),
                },
                &nobody,
            ))
            .await;
        expect_code(read, Code::PermissionDenied);
        let wrong = users
            .change_password(with_bearer(
                ChangePasswordRequest {
                    name: ann.name.clone(),
                    current_password: "not the password at all".into(),
                    new_password: format!("{PASSWORD} again"),
                },
                &analyst,
            ))
            .await;
        expect_code(wrong, Code::PermissionDenied);

        let events = eventually(std::time::Duration::from_secs(10), || {
            let mesh = &mesh;
            async move {
                let events = audit_events_arrived(mesh, "acme").await?;
                let complete = !denied(&events, "identity.users.create").is_empty()
                    && !denied(&events, "identity.roles.assign").is_empty()
                    && !denied(&events, "identity.users.changePassword").is_empty();
                Ok(complete.then_some(events))
            }
        })
        .await?;
        let create = denied(&events, "identity.users.create");
        assert_eq!(create.len(), 1, "{backend}: {create:?}");
        let create = create[0];
        assert_eq!(create.tenant_id, "acme");
        let actor = create.actor.as_ref().expect("an actor");
        assert_eq!(
            (actor.tenant_id.as_str(), actor.id.as_str()),
            ("acme", ann.name.rsplit('/').next().unwrap_or_default())
        );
        assert_eq!(create.attributes["reason"], "PERMISSION_DENIED");
        let origin = create.origin.as_ref().expect("the caller's origin");
        assert_eq!(origin.ip_address, "127.0.0.1", "{backend}");
        assert_eq!(
            create.attributes["method"],
            "/palisade.identity.v1.UserService/CreateUser"
        );
        let assign = denied(&events, "identity.roles.assign");
        assert_eq!(assign.len(), 1, "{backend}: {assign:?}");
        assert_eq!(assign[0].attributes["reason"], "ROLE_ESCALATION");
        // Refused by the handler, which knows whom the call was about: the user, not the tenant.
        assert_eq!(assign[0].resource, ann.name, "{backend}");
        // Refused before that (no name read yet): the tenant.
        assert_eq!(create.resource, "tenants/acme", "{backend}");
        assert!(
            denied(&events, "identity.users.get").is_empty(),
            "{backend}: a refused read was audited"
        );
        // The handler records a wrong current password itself (it counts towards lockout).
        assert_eq!(
            denied(&events, "identity.users.changePassword").len(),
            1,
            "{backend}"
        );
        mesh.stop().await?;
    }
    Ok(())
}
