//! Tenants and their plans: plans set features and limits, overrides replace them, updates
//! follow their mask and who may change what, and a tenant's admin never reaches another
//! tenant.

mod common;
mod identity_kit;

use std::time::Duration;

use common::{expect_code, new_tenant, reason, until_a_call_waits_for_a_lock, violated_fields};
use identity_kit::{login, new_user, state_change, update, with_bearer};
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        CheckFeatureRequest, CreateRoleRequest, CreateTenantRequest, DeleteTenantRequest,
        GetTenantRequest, GetUsageRequest, Plan, Role, Tenant, TenantState, UpdateTenantRequest,
        role_service_client::RoleServiceClient, tenant_service_client::TenantServiceClient,
        user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, eventually};
use tonic::Code;

fn with_overrides(
    mut request: CreateTenantRequest,
    features: &[(&str, bool)],
    limits: &[(&str, i64)],
) -> CreateTenantRequest {
    let tenant = request.tenant.as_mut().expect("a tenant");
    tenant.feature_overrides = features
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    tenant.limit_overrides = limits.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    request
}

/// Until `CreateApiKey` exists, a tenant's API key is planted in identity's database the way
/// identity stores one (`pal_<id>_<secret>`, SHA-256 of the secret); returns the key.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_set_features_and_limits_and_overrides_replace_them() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let pro = tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?
            .into_inner();
        for (feature, enabled) in [
            ("audit_export", true),
            ("webhooks", true),
            ("custom_roles", true),
            ("backups", true),
            ("advanced_reports", true),
            ("slo", true),
            ("sso", false),
            ("dr_plans", false),
        ] {
            assert_eq!(pro.features.get(feature), Some(&enabled), "{feature}");
        }
        let limits: Vec<(&str, i64)> = pro.limits.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            limits,
            [
                ("api_calls_per_month", 10_000_000),
                ("api_keys", 100),
                ("custom_roles", 50),
                ("request_burst", 400),
                ("requests_per_second", 200),
                ("users", 500)
            ]
        );
        assert!(pro.feature_overrides.is_empty() && pro.limit_overrides.is_empty());

        let custom = tenants
            .create_tenant(mesh.as_operator(with_overrides(
                new_tenant("globex", "Globex", Plan::Free),
                &[("sso", true), ("webhooks", false)],
                &[("users", 1_000), ("api_calls_per_month", -1)],
            )))
            .await?
            .into_inner();
        assert_eq!(custom.features.get("sso"), Some(&true));
        assert_eq!(custom.features.get("webhooks"), Some(&false));
        assert_eq!(
            custom.features.get("audit_export"),
            Some(&false),
            "free plan default"
        );
        assert_eq!(custom.limits.get("users"), Some(&1_000));
        assert_eq!(custom.limits.get("api_calls_per_month"), Some(&-1));
        assert_eq!(custom.limits.get("api_keys"), Some(&2), "free plan default");
        assert_eq!(custom.feature_overrides.len(), 2);
        let fetched = tenants
            .get_tenant(mesh.as_operator(GetTenantRequest {
                name: "tenants/globex".into(),
            }))
            .await?
            .into_inner();
        assert_eq!(fetched, custom);

        let bad = tenants
            .create_tenant(mesh.as_operator(with_overrides(
                new_tenant("initech", "Initech", Plan::Free),
                &[("teleport", true)],
                &[("users", -2), ("apples", 3)],
            )))
            .await;
        assert_eq!(
            violated_fields(&expect_code(bad, Code::InvalidArgument)),
            [
                "tenant.feature_overrides[teleport]",
                "tenant.limit_overrides[apples]",
                "tenant.limit_overrides[users]"
            ]
        );

        // CheckFeature answers from the plan or the override, and says which.
        let check = |tenant: &str, feature: &str| CheckFeatureRequest {
            tenant: format!("tenants/{tenant}"),
            feature: feature.to_owned(),
        };
        let answer = tenants
            .check_feature(mesh.as_operator(check("acme", "custom_roles")))
            .await?
            .into_inner();
        assert!(answer.enabled);
        assert_eq!(answer.source, "plan professional");
        let answer = tenants
            .check_feature(mesh.as_operator(check("globex", "sso")))
            .await?
            .into_inner();
        assert!(answer.enabled);
        assert_eq!(answer.source, "tenant override");
        for (tenant, feature, field) in [
            ("acme", "teleport", "feature"),
            ("acme", "", "feature"),
            ("Not A Tenant", "sso", "tenant"),
        ] {
            let bad = tenants
                .check_feature(mesh.as_operator(check(tenant, feature)))
                .await;
            assert_eq!(
                violated_fields(&expect_code(bad, Code::InvalidArgument)),
                [field]
            );
        }
        let nowhere = tenants
            .check_feature(mesh.as_operator(check("nowhere", "sso")))
            .await;
        expect_code(nowhere, Code::NotFound);

        // A feature that is off refuses what needs it, naming what switched it off.
        tenants
            .create_tenant(mesh.as_operator(with_overrides(
                new_tenant("hooli", "Hooli", Plan::Professional),
                &[("custom_roles", false)],
                &[],
            )))
            .await?;
        for (tenant, source) in [("globex", "plan free"), ("hooli", "tenant override")] {
            let role = CreateRoleRequest {
                parent: format!("tenants/{tenant}"),
                role_id: "user-reader".into(),
                role: Some(Role {
                    display_name: "User reader".into(),
                    permissions: vec!["identity.users.list".into()],
                    ..Role::default()
                }),
            };
            let refused = RoleServiceClient::new(mesh.gateway())
                .create_role(mesh.as_operator(role))
                .await;
            let refused = expect_code(refused, Code::FailedPrecondition);
            assert_eq!(reason(&refused), "FEATURE_NOT_ENABLED");
            assert!(refused.message().contains(source), "{refused:?}");
        }
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_follow_the_mask_and_who_may_change_what() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        for (id, name) in [("acme", "Acme"), ("globex", "Globex")] {
            tenants
                .create_tenant(mesh.as_operator(new_tenant(id, name, Plan::Professional)))
                .await?;
        }
        UserServiceClient::new(mesh.gateway())
            .create_user(mesh.as_operator(new_user("acme", "ada@acme.example", &["admin"])))
            .await?;
        let (admin, _) = login(&mesh, "acme", "ada@acme.example").await?;
        let named = |name: &str| Tenant {
            name: name.to_owned(),
            ..Tenant::default()
        };

        // The tenant's admin renames it ...
        let renamed = tenants
            .update_tenant(with_bearer(
                update(
                    Tenant {
                        display_name: " Acme Corp ".into(),
                        ..named("tenants/acme")
                    },
                    &["display_name"],
                ),
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(renamed.display_name, "Acme Corp");
        assert_eq!(renamed.plan(), Plan::Professional);
        assert_ne!(renamed.update_time, renamed.create_time);
        // ... also by sending back a fetched tenant whole (empty mask: every set field, and
        // only the name changes) ...
        let mut fetched = tenants
            .get_tenant(with_bearer(
                GetTenantRequest {
                    name: "tenants/acme".into(),
                },
                &admin,
            ))
            .await?
            .into_inner();
        fetched.display_name = "Acme Inc".into();
        let round_trip = tenants
            .update_tenant(with_bearer(
                UpdateTenantRequest {
                    tenant: Some(fetched),
                    update_mask: None,
                },
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(round_trip.display_name, "Acme Inc");
        // ... but cannot change its plan, state or limits.
        for (tenant, paths) in [
            (
                Tenant {
                    plan: Plan::Enterprise as i32,
                    ..named("tenants/acme")
                },
                vec!["plan"],
            ),
            (
                Tenant {
                    limit_overrides: [("users".to_owned(), 10_000)].into(),
                    ..named("tenants/acme")
                },
                vec![],
            ),
            (
                Tenant {
                    display_name: "Acme".into(),
                    domain: "acme.example.com".into(),
                    ..named("tenants/acme")
                },
                vec!["display_name", "domain", "region"],
            ),
        ] {
            let denied = tenants
                .update_tenant(with_bearer(update(tenant, &paths), &admin))
                .await;
            assert_eq!(
                reason(&expect_code(denied, Code::PermissionDenied)),
                "PLATFORM_OPERATOR_ONLY",
                "{paths:?}"
            );
        }

        // A platform operator can; limits follow the plan and the overrides at once.
        let upgraded = tenants
            .update_tenant(mesh.as_operator(update(
                Tenant {
                    plan: Plan::Enterprise as i32,
                    domain: "Acme.Example.com".into(),
                    limit_overrides: [("api_keys".to_owned(), 5_000)].into(),
                    ..named("tenants/acme")
                },
                &["plan", "domain", "limit_overrides"],
            )))
            .await?
            .into_inner();
        assert_eq!(upgraded.plan(), Plan::Enterprise);
        assert_eq!(upgraded.domain, "acme.example.com");
        assert_eq!(upgraded.features.get("sso"), Some(&true));
        assert_eq!(upgraded.limits.get("users"), Some(&-1));
        assert_eq!(upgraded.limits.get("api_keys"), Some(&5_000));
        assert_eq!(upgraded.display_name, "Acme Inc", "unmasked fields stay");

        // Masks name known fields; values are validated; domains stay unique. An output-only
        // field may be named (a tenant read and sent back), and is ignored (AIP-203).
        let unknown = tenants
            .update_tenant(mesh.as_operator(update(named("tenants/acme"), &["usage"])))
            .await;
        assert_eq!(
            violated_fields(&expect_code(unknown, Code::InvalidArgument)),
            ["update_mask"]
        );
        tenants
            .update_tenant(mesh.as_operator(update(named("tenants/acme"), &["name"])))
            .await?;
        let output_only = tenants
            .update_tenant(mesh.as_operator(update(named("tenants/acme"), &["create_time"])))
            .await?
            .into_inner();
        assert_eq!(output_only.create_time, upgraded.create_time);
        let invalid = tenants
            .update_tenant(mesh.as_operator(update(
                Tenant {
                    region: "EU West".into(),
                    feature_overrides: [("teleport".to_owned(), true)].into(),
                    ..named("tenants/acme")
                },
                &["display_name", "region", "feature_overrides"],
            )))
            .await;
        assert_eq!(
            violated_fields(&expect_code(invalid, Code::InvalidArgument)),
            [
                "tenant.display_name",
                "tenant.region",
                "tenant.feature_overrides[teleport]"
            ]
        );
        let bad_name = tenants
            .update_tenant(mesh.as_operator(update(named("acme"), &["display_name"])))
            .await;
        assert_eq!(
            violated_fields(&expect_code(bad_name, Code::InvalidArgument)),
            ["tenant.name"]
        );
        let taken = tenants
            .update_tenant(mesh.as_operator(update(
                Tenant {
                    domain: "acme.example.com".into(),
                    ..named("tenants/globex")
                },
                &["domain"],
            )))
            .await;
        expect_code(taken, Code::AlreadyExists);
        let missing = tenants
            .update_tenant(mesh.as_operator(update(
                Tenant {
                    display_name: "Nobody".into(),
                    ..named("tenants/nowhere")
                },
                &["display_name"],
            )))
            .await;
        expect_code(missing, Code::NotFound);
        for state in [TenantState::Suspended, TenantState::Inactive] {
            let system = tenants
                .update_tenant(mesh.as_operator(state_change("system", state)))
                .await;
            assert_eq!(
                reason(&expect_code(system, Code::FailedPrecondition)),
                "SYSTEM_TENANT"
            );
        }

        // The change is audited in the tenant's log with the fields that changed.
        let audit = AuditServiceClient::new(mesh.gateway());
        let event = eventually(Duration::from_secs(10), || {
            let mut audit = audit.clone();
            let request = mesh.as_operator(ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                filter: r#"action = "identity.tenants.update""#.into(),
                ..Default::default()
            });
            async move {
                let events = audit.list_audit_events(request).await?.into_inner();
                Ok(events
                    .audit_events
                    .into_iter()
                    .find(|event| event.attributes.contains_key("plan")))
            }
        })
        .await?;
        assert_eq!(
            event.attributes.get("fields").map(String::as_str),
            Some("plan domain limit_overrides")
        );
        assert_eq!(
            event.attributes.get("plan").map(String::as_str),
            Some("enterprise")
        );
        assert_eq!(event.actor.expect("an actor").tenant_id, "system");
        mesh.stop().await?;
    }
    Ok(())
}

/// Two tenants created at once with one domain: the domain check of the second runs while the
/// first's row is not committed, so the unique index decides, and the refusal names the domain
/// (not the new tenant's id, which exists nowhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_taken_by_a_racing_creation_is_named_in_the_refusal() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut racing = db.begin().await?;
        sqlx::query(
            "INSERT INTO tenants (id, display_name, plan, state, region, domain, create_time, \
             update_time) VALUES ('globex', 'Globex', 'free', 'active', 'eu', 'shared.example.com', 1, 1)",
        )
        .execute(&mut *racing)
        .await?;
        let mut create = new_tenant("initech", "Initech", Plan::Free);
        create.tenant.as_mut().expect("a tenant").domain = "shared.example.com".into();
        let call = tokio::spawn({
            let (gateway, create) = (mesh.gateway(), mesh.as_operator(create));
            async move {
                TenantServiceClient::new(gateway)
                    .create_tenant(create)
                    .await
            }
        });
        until_a_call_waits_for_a_lock(&db, &mut racing, backend).await?;
        racing.commit().await?;
        let refused = expect_code(call.await?, Code::AlreadyExists);
        assert_eq!(
            refused.message(),
            "a tenant with domain shared.example.com already exists",
            "{backend}"
        );
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_cannot_reach_another_tenant() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        for id in ["acme", "globex"] {
            tenants
                .create_tenant(mesh.as_operator(new_tenant(id, id, Plan::Professional)))
                .await?;
        }
        UserServiceClient::new(mesh.gateway())
            .create_user(mesh.as_operator(new_user("acme", "ada@acme.example", &["admin"])))
            .await?;
        let (admin, _) = login(&mesh, "acme", "ada@acme.example").await?;

        // Its own tenant answers ...
        tenants
            .get_usage(with_bearer(
                GetUsageRequest {
                    name: "tenants/acme/usage".into(),
                },
                &admin,
            ))
            .await?;
        // ... another is not found, whatever the call.
        let update = tenants
            .update_tenant(with_bearer(
                update(
                    Tenant {
                        name: "tenants/globex".into(),
                        display_name: "Owned".into(),
                        ..Tenant::default()
                    },
                    &["display_name"],
                ),
                &admin,
            ))
            .await;
        expect_code(update, Code::NotFound);
        // Deleting is for platform operators: refused alike whichever tenant is named, so
        // the answer tells nothing of globex.
        for name in ["tenants/globex", "tenants/nonexistent"] {
            let delete = tenants
                .delete_tenant(with_bearer(
                    DeleteTenantRequest { name: name.into() },
                    &admin,
                ))
                .await;
            assert_eq!(
                reason(&expect_code(delete, Code::PermissionDenied)),
                "PLATFORM_OPERATOR_ONLY"
            );
        }
        let usage = tenants
            .get_usage(with_bearer(
                GetUsageRequest {
                    name: "tenants/globex/usage".into(),
                },
                &admin,
            ))
            .await;
        expect_code(usage, Code::NotFound);
        let feature = tenants
            .check_feature(with_bearer(
                CheckFeatureRequest {
                    tenant: "tenants/globex".into(),
                    feature: "sso".into(),
                },
                &admin,
            ))
            .await;
        expect_code(feature, Code::NotFound);
        let globex = tenants
            .get_tenant(mesh.as_operator(GetTenantRequest {
                name: "tenants/globex".into(),
            }))
            .await?
            .into_inner();
        assert_eq!(globex.display_name, "globex");
        mesh.stop().await?;
    }
    Ok(())
}
