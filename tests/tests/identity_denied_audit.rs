//! Refused attempts at audited calls are in the audit log: an analyst's `CreateUser` (a
//! missing permission, refused by the policy layer) and a manager's grant of `admin` (refused
//! by the handler) are recorded in the caller's tenant, outcome `DENIED`, with the reason;
//! refused reads are not audited, and a wrong current password is recorded once, by its
//! handler, not twice. A flood of refusals is counted whole, whether recorded one by one or,
//! while the writers are busy, as a count (`identity.denials.unrecorded`).

mod common;
mod identity_kit;

use common::{audit_events_arrived, expect_code, new_tenant, reason};
use identity_kit::{PASSWORD, list_users, login, new_user, with_bearer};
use palisade_proto::palisade::{
    compliance::v1::{
        AuditEvent, ListAuditEventsRequest, Outcome, audit_service_client::AuditServiceClient,
    },
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

/// The number of acme's refusals with `action`, and the sum of their `refusals` attributes.
async fn events_of(mesh: &Mesh, action: &str) -> anyhow::Result<(usize, u64)> {
    let mut audit = AuditServiceClient::new(mesh.gateway());
    let (mut events, mut refusals, mut page_token) = (0, 0, String::new());
    loop {
        let page = audit
            .list_audit_events(mesh.as_operator(ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                filter: format!(r#"action = "{action}""#),
                page_size: 1000,
                page_token,
            }))
            .await?
            .into_inner();
        let denied = page
            .audit_events
            .iter()
            .filter(|e| e.outcome() == Outcome::Denied);
        for event in denied {
            events += 1;
            refusals += event
                .attributes
                .get("refusals")
                .map_or(Ok(0), |n| n.parse())?;
        }
        if page.next_page_token.is_empty() {
            return Ok((events, refusals));
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_counted_whole_in_the_log() -> anyhow::Result<()> {
    const FLOOD: usize = 400;
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Enterprise)))
            .await?;
        let users = UserServiceClient::new(mesh.gateway());
        users
            .clone()
            .create_user(mesh.as_operator(new_user("acme", "ann@acme.example", &["analyst"])))
            .await?;
        let (analyst, _) = login(&mesh, "acme", "ann@acme.example").await?;
        let calls = (0..FLOOD).map(|n| {
            let mut users = users.clone();
            let request = with_bearer(
                new_user("acme", &format!("u{n}@acme.example"), &[]),
                &analyst,
            );
            async move { users.create_user(request).await }
        });
        let answers = futures::future::join_all(calls).await;
        let refused = answers
            .iter()
            .filter(
                |answer| matches!(answer, Err(status) if status.code() == Code::PermissionDenied),
            )
            .count();
        assert_eq!(refused, FLOOD, "{backend}: refused by identity");

        // Every refusal is in the log: on its own, or in a count of those that were not.
        let (one_by_one, counted) = eventually(std::time::Duration::from_secs(20), || {
            let mesh = &mesh;
            async move {
                let (one_by_one, _) = events_of(mesh, "identity.users.create").await?;
                let (_, counted) = events_of(mesh, "identity.denials.unrecorded").await?;
                let whole = one_by_one as u64 + counted == refused as u64;
                Ok(whole.then_some((one_by_one, counted)))
            }
        })
        .await?;
        // The flood outran the writers, so the counts were needed.
        assert!(
            counted > 0,
            "{backend}: all {one_by_one} recorded one by one"
        );
        mesh.stop().await?;
    }
    Ok(())
}
