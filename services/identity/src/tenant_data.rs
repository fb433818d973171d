//! Tenant data streams (`TenantDataService`, tenant_data.proto): the format that export writes
//! and import reads — the order of records, the running checksum and counts, the stored records
//! as wire records and back, and everything an import checks before a record is written.

use palisade_grpc::{ApiError, time::timestamp};
use palisade_proto::palisade::identity::v1::{
    ExportedApiKey, ExportedRole, ExportedTenant, ExportedUser, TenantDataCounts, TenantDataHeader,
    TenantDataRecord, TenantDataTrailer, tenant_data_record::Record,
};
use palisade_tenancy::TenantId;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{
    roles::{RoleRecord, Roles},
    store::ApiKeyRecord,
    tenants::TenantRecord,
    users::UserRecord,
};

mod import;
mod spool;

pub use import::{Import, Restored};
pub use spool::Spool;

/// The format this server writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Records per batch chunk, and rows per page when export reads the store.
pub const BATCH_SIZE: usize = 500;

/// How many records of each kind a stream carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub tenants: i64,
    pub roles: i64,
    pub users: i64,
    pub api_keys: i64,
}

impl From<Counts> for TenantDataCounts {
    fn from(counts: Counts) -> TenantDataCounts {
        TenantDataCounts {
            tenants: counts.tenants,
            roles: counts.roles,
            users: counts.users,
            api_keys: counts.api_keys,
        }
    }
}

/// The running checksum and counts over a stream's records, in stream order: for each record
/// the length of its encoding (8 bytes, big-endian), then the encoding. Prost encodes fields in
/// number order and the one map-bearing message uses sorted maps, so re-encoding a received
/// record gives the bytes its sender hashed.
#[derive(Clone, Default)]
pub struct Tally {
    hasher: Sha256,
    counts: Counts,
}

impl Tally {
    pub fn add(&mut self, record: &TenantDataRecord) {
        let bytes = record.encode_to_vec();
        self.hasher.update((bytes.len() as u64).to_be_bytes());
        self.hasher.update(&bytes);
        let count = match &record.record {
            Some(Record::Tenant(_)) => &mut self.counts.tenants,
            Some(Record::Role(_)) => &mut self.counts.roles,
            Some(Record::User(_)) => &mut self.counts.users,
            Some(Record::ApiKey(_)) => &mut self.counts.api_keys,
            None => return,
        };
        *count += 1;
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The trailer that closes a stream of the records added.
    pub fn trailer(self) -> TenantDataTrailer {
        TenantDataTrailer {
            counts: Some(self.counts.into()),
            sha256: self.hasher.finalize().to_vec(),
        }
    }
}

/// The header that opens an export of `tenant` taken at `now`.
pub fn header(tenant: &TenantId, now: i64) -> TenantDataHeader {
    TenantDataHeader {
        format_version: FORMAT_VERSION,
        tenant: format!("tenants/{tenant}"),
        export_time: Some(timestamp(now)),
        replace: false,
    }
}

/// Refuses to export a tenant whose stored plan or state this server does not know (written
/// by a newer version): the stream would carry it as unspecified, which no import restores.
pub fn exportable(tenant: &TenantRecord) -> Result<(), ApiError> {
    match tenant.unknown_field() {
        Some(path) => {
            Err(tenant.unknown_field_refusal(path, "export it with the version that wrote it"))
        }
        None => Ok(()),
    }
}

pub fn tenant_record(tenant: &TenantRecord) -> TenantDataRecord {
    record(Record::Tenant(ExportedTenant {
        name: format!("tenants/{}", tenant.id),
        display_name: tenant.display_name.clone(),
        plan: tenant.plan as i32,
        state: tenant.state as i32,
        region: tenant.region.clone(),
        domain: tenant.domain.clone().unwrap_or_default(),
        feature_overrides: tenant.feature_overrides.clone(),
        limit_overrides: tenant.limit_overrides.clone(),
        create_time: Some(timestamp(tenant.create_time)),
        update_time: Some(timestamp(tenant.update_time)),
    }))
}

/// The refusal to export `tenant`, which holds a user in a state this server does not know
/// (`TenantSnapshot::has_user_in_unknown_state`): the stream would carry it as unspecified,
/// which no import restores (and an import must not guess).
pub fn unknown_user_state(tenant: &TenantId) -> ApiError {
    ApiError::FailedPrecondition {
        reason: "UNKNOWN_USER_STATE",
        message: format!(
            "tenants/{tenant} holds a user in a state this server does not know; export it \
             with the version that wrote it"
        ),
    }
}

/// `role` as exported: the permissions it still grants (`Roles::still_granted`), which an
/// import restores; one that has left the catalogue grants nothing and an import refuses it.
pub fn role_record(role: &RoleRecord, roles: &Roles) -> TenantDataRecord {
    record(Record::Role(ExportedRole {
        name: role.name(),
        display_name: role.display_name.clone(),
        description: role.description.clone(),
        permissions: roles.still_granted(&role.permissions).into_iter().collect(),
        create_time: role.create_time.map(timestamp),
        update_time: role.update_time.map(timestamp),
    }))
}

pub fn user_record(user: &UserRecord, password_hash: String) -> TenantDataRecord {
    record(Record::User(ExportedUser {
        name: user.name(),
        email: user.email.clone(),
        display_name: user.display_name.clone(),
        state: user.state as i32,
        roles: user.roles.clone(),
        password_hash,
        create_time: Some(timestamp(user.create_time)),
        update_time: Some(timestamp(user.update_time)),
    }))
}

/// `key` as exported: the scopes it still grants (`*` or permissions of the catalogue), which
/// an import restores; `None` for a key left with none, which grants nothing and which no
/// import would take.
pub fn api_key_record(key: &ApiKeyRecord, roles: &Roles) -> Option<TenantDataRecord> {
    let scopes = roles.still_granted_scopes(&key.scopes);
    if scopes.is_empty() {
        return None;
    }
    Some(record(Record::ApiKey(ExportedApiKey {
        name: key.name(),
        display_name: key.display_name.clone(),
        scopes,
        owner: key.owner_name(),
        secret_sha256: key.secret_hash.clone(),
        create_time: Some(timestamp(key.create_time)),
        expire_time: Some(timestamp(key.expire_time)),
        revoke_time: key.revoke_time.map(timestamp),
        last_use_time: key.last_use_time.map(timestamp),
        created_with: key.created_with.clone().unwrap_or_default(),
    })))
}

fn record(record: Record) -> TenantDataRecord {
    TenantDataRecord {
        record: Some(record),
    }
}

#[cfg(test)]
mod tests {
    use palisade_proto::palisade::identity::v1::{
        ExportedUser, Plan, TenantDataTrailer, TenantState, UserState,
    };

    use super::*;

    const T0: i64 = 1_795_259_646_000_000;

    fn catalogue() -> std::sync::Arc<crate::roles::Roles> {
        let policies = palisade_grpc::MethodPolicies::palisade().unwrap();
        std::sync::Arc::new(crate::roles::Roles::from_catalogue(&policies))
    }

    fn acme() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn acme_record() -> TenantRecord {
        TenantRecord {
            id: acme(),
            display_name: "Acme".into(),
            plan: Plan::Professional,
            state: TenantState::Suspended,
            region: "eu-west-1".into(),
            domain: Some("acme.example.com".into()),
            feature_overrides: [("sso".to_owned(), true)].into(),
            limit_overrides: [("users".to_owned(), 7)].into(),
            create_time: T0,
            update_time: T0 + 1,
        }
    }

    fn stream() -> Vec<TenantDataRecord> {
        let tenant = acme_record();
        let role = RoleRecord {
            tenant_id: acme(),
            id: "user-reader".into(),
            display_name: "User reader".into(),
            description: String::new(),
            // One that left the catalogue since: it grants nothing, is not exported, and so
            // does not stop the import.
            permissions: [
                "identity.users.get".to_owned(),
                "identity.retired.method".to_owned(),
            ]
            .into(),
            built_in: false,
            create_time: Some(T0),
            update_time: Some(T0),
        };
        let user = UserRecord {
            id: "0192f3c4-7a1e-7b3c-9d2e-4f5a6b7c8d9e".into(),
            tenant_id: acme(),
            email: "ada@acme.example".into(),
            display_name: "Ada".into(),
            state: UserState::Active,
            roles: vec!["user-reader".into(), "viewer".into()],
            create_time: T0,
            update_time: T0,
            locked_until: None,
        };
        let key = ApiKeyRecord {
            id: "0192f3c47a1e7b3c9d2e4f5a6b7c8d9e".into(),
            tenant_id: acme(),
            display_name: "ci".into(),
            secret_hash: vec![7; 32],
            // As for the role: a retired scope is not exported.
            scopes: vec![
                "identity.users.list".into(),
                "identity.retired.method".into(),
            ],
            owner_user_id: Some(user.id.clone()),
            created_with: Some("tenants/system/apiKeys/0192f3c47a1e7b3c9d2e4f5a6b7c8d9f".into()),
            create_time: T0,
            expire_time: T0 + 10,
            revoke_time: None,
            last_use_time: Some(T0 + 2),
        };
        vec![
            tenant_record(&tenant),
            role_record(&role, &catalogue()),
            user_record(&user, "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            api_key_record(&key, &catalogue()).expect("a key with catalogue scopes"),
        ]
    }

    fn trailer_of(records: &[TenantDataRecord]) -> TenantDataTrailer {
        let mut tally = Tally::default();
        records.iter().for_each(|record| tally.add(record));
        tally.trailer()
    }

    /// The fields an import of `records` (one batch) closed by `trailer` complains about.
    fn import(records: &[TenantDataRecord], trailer: &TenantDataTrailer) -> Vec<String> {
        let mut import = Import::begin(&header(&acme(), T0), catalogue()).unwrap();
        let result = import
            .batch(1, records)
            .and_then(|_| import.finish(trailer));
        match result {
            Ok(_) => Vec::new(),
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    fn user_mut(record: &mut TenantDataRecord) -> &mut ExportedUser {
        match &mut record.record {
            Some(Record::User(user)) => user,
            other => panic!("not a user: {other:?}"),
        }
    }

    #[test]
    fn a_tenant_on_an_unknown_plan_or_state_is_not_exported() {
        assert!(exportable(&acme_record()).is_ok());
        for (unknown, reason) in [
            (
                TenantRecord {
                    plan: Plan::Unspecified,
                    ..acme_record()
                },
                "UNKNOWN_TENANT_PLAN",
            ),
            (
                TenantRecord {
                    state: TenantState::Unspecified,
                    ..acme_record()
                },
                "UNKNOWN_TENANT_STATE",
            ),
        ] {
            match exportable(&unknown) {
                Err(ApiError::FailedPrecondition { reason: got, .. }) => assert_eq!(got, reason),
                other => panic!("expected {reason}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_key_left_with_no_scope_it_grants_is_not_exported() {
        let Some(Record::ApiKey(exported)) = stream().remove(3).record else {
            panic!("the fourth record is the key");
        };
        assert_eq!(exported.scopes, ["identity.users.list"]);
        let key = ApiKeyRecord {
            id: "0192f3c47a1e7b3c9d2e4f5a6b7c8d9e".into(),
            tenant_id: TenantId::system(),
            display_name: "operator".into(),
            secret_hash: vec![7; 32],
            scopes: vec!["identity.retired.method".into()],
            owner_user_id: None,
            created_with: None,
            create_time: T0,
            expire_time: T0 + 10,
            revoke_time: None,
            last_use_time: None,
        };
        assert!(api_key_record(&key, &catalogue()).is_none());
        // An operator's `*` is no catalogue permission, and is exported.
        let operator = ApiKeyRecord {
            scopes: vec![crate::authz::ALL_PERMISSIONS.into()],
            ..key
        };
        assert!(api_key_record(&operator, &catalogue()).is_some());
    }

    #[test]
    fn an_export_imports_back_whole() {
        let records = stream();
        let trailer = trailer_of(&records);
        let mut import = Import::begin(&header(&acme(), T0), catalogue()).unwrap();
        let restored = import.batch(1, &records).unwrap();
        let counts = import.finish(&trailer).unwrap();
        assert_eq!(
            counts,
            Counts {
                tenants: 1,
                roles: 1,
                users: 1,
                api_keys: 1
            }
        );
        let Restored::Tenant(tenant) = &restored[0].1 else {
            panic!("the tenant comes first")
        };
        assert_eq!(tenant.state, TenantState::Suspended);
        assert_eq!(tenant.limit_overrides["users"], 7);
        let Restored::User(user, hash) = &restored[2].1 else {
            panic!("then the user")
        };
        assert_eq!(user.roles, ["user-reader", "viewer"]);
        assert!(hash.starts_with("$argon2id$"));
        let Restored::ApiKey(key) = &restored[3].1 else {
            panic!("then the key")
        };
        assert_eq!(key.last_use_time, Some(T0 + 2));
        // So revoking the operator's key that made it still revokes it.
        assert_eq!(
            key.created_with.as_deref(),
            Some("tenants/system/apiKeys/0192f3c47a1e7b3c9d2e4f5a6b7c8d9f")
        );
        assert_eq!(restored[3].0, "batch.records[3]");
    }

    #[test]
    fn a_key_was_created_with_a_key_of_its_tenant_or_an_operators() {
        let with_maker = |maker: &str| {
            let mut records = stream();
            if let Some(Record::ApiKey(key)) = &mut records[3].record {
                key.created_with = maker.into();
            }
            import(&records, &trailer_of(&records))
        };
        let id = "0192f3c47a1e7b3c9d2e4f5a6b7c8d9f";
        for fine in ["".to_owned(), format!("tenants/acme/apiKeys/{id}")] {
            assert_eq!(with_maker(&fine), Vec::<String>::new(), "{fine}");
        }
        for bad in [
            format!("tenants/globex/apiKeys/{id}"),
            format!("tenants/acme/apiKeys/{}", id.to_uppercase()),
            format!("tenants/acme/users/{id}"),
            id.to_owned(),
        ] {
            assert_eq!(
                with_maker(&bad),
                ["batch.records[3].api_key.created_with"],
                "{bad}"
            );
        }
    }

    #[test]
    fn the_checksum_covers_every_record_in_order() {
        let records = stream();
        let trailer = trailer_of(&records);
        let mut flipped = records.clone();
        user_mut(&mut flipped[2]).display_name = "Eve".into();
        assert_eq!(import(&flipped, &trailer), ["trailer.sha256"]);
        let dropped = [&records[..3]].concat();
        assert_eq!(
            import(&dropped, &trailer),
            ["trailer.counts.api_keys", "trailer.sha256"]
        );
        let no_counts = TenantDataTrailer {
            counts: None,
            ..trailer.clone()
        };
        assert_eq!(import(&records, &no_counts), ["trailer.counts"]);
        assert_eq!(import(&[], &trailer_of(&[])), ["batch"]);
    }

    #[test]
    fn records_belong_to_the_tenant_and_come_in_order() {
        let mut records = stream();
        user_mut(&mut records[2]).name =
            "tenants/globex/users/0192f3c4-7a1e-7b3c-9d2e-4f5a6b7c8d9e".into();
        assert_eq!(
            import(&records, &trailer_of(&records)),
            ["batch.records[2].user.name"]
        );
        let records = stream();
        let swapped = vec![records[0].clone(), records[2].clone(), records[1].clone()];
        // A user before the custom role it holds: its role is unknown, the role out of order.
        assert_eq!(
            import(&swapped, &trailer_of(&swapped)),
            ["batch.records[1].user.roles[0]", "batch.records[2]"]
        );
        let headless = records[1..].to_vec();
        assert_eq!(
            import(&headless, &trailer_of(&headless)),
            ["batch.records[0]", "batch.records[1]", "batch.records[2]"]
        );
    }

    #[test]
    fn records_must_be_well_formed() {
        let mut records = stream();
        let user = user_mut(&mut records[2]);
        user.roles = vec!["ghost-role".into()];
        user.password_hash = "plain text".into();
        user.state = 9;
        user.create_time = None;
        assert_eq!(
            import(&records, &trailer_of(&records)),
            [
                "batch.records[2].user.state",
                "batch.records[2].user.roles[0]",
                "batch.records[2].user.password_hash",
                "batch.records[2].user.create_time",
            ]
        );
        let empty = vec![records[0].clone(), TenantDataRecord { record: None }];
        assert_eq!(import(&empty, &trailer_of(&empty)), ["batch.records[1]"]);
    }

    #[test]
    fn roles_and_keys_come_back_only_with_catalogue_permissions() {
        let mut records = stream();
        if let Some(Record::Role(role)) = &mut records[1].record {
            // Internal (service-to-service) permissions are not in the catalogue either.
            role.permissions = vec![
                "identity.users.get".into(),
                "identity.authorization.check".into(),
            ];
        }
        if let Some(Record::ApiKey(key)) = &mut records[3].record {
            key.scopes = vec!["*".into(), "identity.users.list".into(), "ghost.x".into()];
        }
        assert_eq!(
            import(&records, &trailer_of(&records)),
            [
                "batch.records[1].role.permissions[1]",
                // The role was refused, so holding it is refused too.
                "batch.records[2].user.roles[0]",
                "batch.records[3].api_key.scopes[0]",
                "batch.records[3].api_key.scopes[2]",
            ]
        );
    }

    #[test]
    fn headers_name_a_known_format_and_a_tenant() {
        let fields = |header: TenantDataHeader| match Import::begin(&header, catalogue()) {
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect::<Vec<_>>()
            }
            other => panic!("unexpected {:?}", other.map(|_| ())),
        };
        assert_eq!(
            fields(TenantDataHeader {
                format_version: 2,
                tenant: "acme".into(),
                ..TenantDataHeader::default()
            }),
            ["header.format_version", "header.tenant"]
        );
        let mut import = Import::begin(&header(&acme(), T0), catalogue()).unwrap();
        let oversized = vec![TenantDataRecord::default(); BATCH_SIZE + 1];
        assert!(matches!(
            import.batch(1, &oversized),
            Err(ApiError::InvalidArgument(v)) if v[0].field == "batch.records"
        ));
    }
}
