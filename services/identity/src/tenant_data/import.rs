//! What an import accepts: a known format, the records of one tenant in stream order, each
//! well formed, and a trailer whose counts and checksum match what arrived. Custom roles and
//! api keys come back only with permissions of this server's catalogue: the checksum shows a
//! stream arrived as it was sent, not who made it, so a restore must not be a way to grant
//! what `CreateRole` and `CreateApiKey` would refuse.

use std::{collections::BTreeSet, sync::Arc};

use palisade_grpc::{ApiError, FieldViolation, time::micros_in_range};
use palisade_proto::palisade::identity::v1::{
    ExportedApiKey, ExportedRole, ExportedTenant, ExportedUser, Plan, TenantDataHeader,
    TenantDataRecord, TenantDataTrailer, TenantState, UserState, tenant_data_record::Record,
};
use palisade_tenancy::{SYSTEM_TENANT, TenantId};

use super::{BATCH_SIZE, Counts, FORMAT_VERSION, Tally};
use crate::{
    api_keys, plans,
    roles::{self, RoleRecord, Roles},
    store::ApiKeyRecord,
    tenants::{self, TenantRecord},
    users::UserRecord,
};

/// A checked record of an import, ready to write.
#[derive(Clone, Debug)]
pub enum Restored {
    Tenant(TenantRecord),
    Role(RoleRecord),
    /// The user and its password hash.
    User(UserRecord, String),
    ApiKey(ApiKeyRecord),
}

/// Record kinds in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Tenant,
    Role,
    User,
    ApiKey,
}

/// An import in progress: what the stream has shown so far.
pub struct Import {
    /// The permission catalogue that roles and scopes are checked against.
    roles: Arc<Roles>,
    tenant: TenantId,
    tally: Tally,
    last: Option<Kind>,
    /// Custom role ids seen, for the users' assignments (roles precede users; a tenant has a
    /// handful, bounded by its plan).
    custom_roles: BTreeSet<String>,
}

impl Import {
    /// Starts from the stream's header: a known format and a tenant.
    pub fn begin(header: &TenantDataHeader, roles: Arc<Roles>) -> Result<Import, ApiError> {
        let mut violations = Vec::new();
        if header.format_version != FORMAT_VERSION {
            violations.push(FieldViolation::new(
                "header.format_version",
                format!(
                    "unknown format version {}; this server reads version {FORMAT_VERSION}",
                    header.format_version
                ),
            ));
        }
        let tenant = tenants::parse_field(&header.tenant, "header.tenant")
            .map_err(|error| match error {
                ApiError::InvalidArgument(found) => violations.extend(found),
                _ => unreachable!("parse_field fails only with INVALID_ARGUMENT"),
            })
            .ok();
        match tenant {
            Some(tenant) if violations.is_empty() => Ok(Import {
                roles,
                tenant,
                tally: Tally::default(),
                last: None,
                custom_roles: BTreeSet::new(),
            }),
            _ => Err(ApiError::InvalidArgument(violations)),
        }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Checks the batch that is chunk `chunk` of the stream and returns its records to write,
    /// each with its field path (`batch.records[i]`) for errors the database finds.
    pub fn batch(
        &mut self,
        chunk: usize,
        records: &[TenantDataRecord],
    ) -> Result<Vec<(String, Restored)>, ApiError> {
        if records.len() > BATCH_SIZE {
            return Err(ApiError::invalid(
                "batch.records",
                format!(
                    "chunk {chunk}: holds {} records; a batch holds at most {BATCH_SIZE}",
                    records.len()
                ),
            ));
        }
        let mut violations = Vec::new();
        let mut restored = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            self.tally.add(record);
            let field = format!("batch.records[{index}]");
            let mut check = Check {
                chunk,
                field: &field,
                violations: &mut violations,
            };
            if let Some(found) = self.record(record, &mut check) {
                restored.push((field, found));
            }
        }
        if violations.is_empty() {
            Ok(restored)
        } else {
            Err(ApiError::InvalidArgument(violations))
        }
    }

    /// Checks the trailer against what the stream carried; the counts of what was written.
    pub fn finish(self, trailer: &TenantDataTrailer) -> Result<Counts, ApiError> {
        let mut violations = Vec::new();
        let counts = self.tally.counts();
        if counts.tenants == 0 {
            violations.push(FieldViolation::new(
                "batch",
                "the stream holds no records; it must hold at least the tenant's",
            ));
        }
        match &trailer.counts {
            None => violations.push(FieldViolation::new("trailer.counts", "is required")),
            Some(claimed) => {
                for (kind, claimed, carried) in [
                    ("tenants", claimed.tenants, counts.tenants),
                    ("roles", claimed.roles, counts.roles),
                    ("users", claimed.users, counts.users),
                    ("api_keys", claimed.api_keys, counts.api_keys),
                ] {
                    if claimed != carried {
                        violations.push(FieldViolation::new(
                            format!("trailer.counts.{kind}"),
                            format!("says {claimed} but the stream carried {carried}"),
                        ));
                    }
                }
            }
        }
        let expected = self.tally.trailer().sha256;
        if trailer.sha256 != expected {
            violations.push(FieldViolation::new(
                "trailer.sha256",
                "does not match the records received: the stream was altered or corrupted",
            ));
        }
        if violations.is_empty() {
            Ok(counts)
        } else {
            Err(ApiError::InvalidArgument(violations))
        }
    }

    fn record(&mut self, record: &TenantDataRecord, check: &mut Check<'_>) -> Option<Restored> {
        let Some(inner) = &record.record else {
            check.bad(
                "",
                "is empty: a record holds a tenant, role, user or api_key",
            );
            return None;
        };
        let kind = match inner {
            Record::Tenant(_) => Kind::Tenant,
            Record::Role(_) => Kind::Role,
            Record::User(_) => Kind::User,
            Record::ApiKey(_) => Kind::ApiKey,
        };
        let in_order = match self.last {
            None => kind == Kind::Tenant,
            Some(last) => kind != Kind::Tenant && kind >= last,
        };
        if !in_order {
            check.bad(
                "",
                "is out of order: the tenant comes first, then custom roles, users and api keys",
            );
            return None;
        }
        self.last = Some(kind);
        match inner {
            Record::Tenant(tenant) => self.tenant_record(tenant, check).map(Restored::Tenant),
            Record::Role(role) => self.role_record(role, check).map(Restored::Role),
            Record::User(user) => self
                .user_record(user, check)
                .map(|(user, hash)| Restored::User(user, hash)),
            Record::ApiKey(key) => self.api_key_record(key, check).map(Restored::ApiKey),
        }
    }

    fn tenant_record(
        &self,
        tenant: &ExportedTenant,
        check: &mut Check<'_>,
    ) -> Option<TenantRecord> {
        let before = check.count();
        let expected = format!("tenants/{}", self.tenant);
        if tenant.name != expected {
            check.bad(
                "tenant.name",
                format!("must be {expected}, the tenant of the header"),
            );
        }
        check.display_name("tenant.display_name", &tenant.display_name);
        let plan = match Plan::try_from(tenant.plan) {
            Ok(Plan::Unspecified) | Err(_) => None,
            Ok(plan) => Some(plan),
        };
        if plan.is_none() {
            check.bad("tenant.plan", format!("unknown plan {}", tenant.plan));
        }
        let state = match TenantState::try_from(tenant.state) {
            Ok(TenantState::Unspecified) | Err(_) => None,
            Ok(state) => Some(state),
        };
        if state.is_none() {
            check.bad("tenant.state", format!("unknown state {}", tenant.state));
        }
        let region_ok = (1..=32).contains(&tenant.region.len())
            && tenant
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            check.bad(
                "tenant.region",
                "must be 1 to 32 characters of a-z, 0-9 and '-'",
            );
        }
        let domain = match tenant.domain.as_str() {
            "" => None,
            domain => {
                let parsed = tenants::parse_domain(domain);
                if parsed.is_none() {
                    check.bad(
                        "tenant.domain",
                        "must be a DNS name such as acme.example.com",
                    );
                }
                parsed
            }
        };
        let prefix = format!("{}.tenant", check.field);
        for violation in
            plans::validate_overrides(&prefix, &tenant.feature_overrides, &tenant.limit_overrides)
        {
            check.push(violation);
        }
        let create_time = check.time("tenant.create_time", &tenant.create_time);
        let update_time = check.time("tenant.update_time", &tenant.update_time);
        if check.count() > before {
            return None;
        }
        Some(TenantRecord {
            id: self.tenant.clone(),
            display_name: tenant.display_name.clone(),
            plan: plan?,
            state: state?,
            region: tenant.region.clone(),
            domain,
            feature_overrides: tenant.feature_overrides.clone(),
            limit_overrides: tenant.limit_overrides.clone(),
            create_time: create_time?,
            update_time: update_time?,
        })
    }

    fn role_record(&mut self, role: &ExportedRole, check: &mut Check<'_>) -> Option<RoleRecord> {
        let before = check.count();
        let id = check.child_id("role.name", &role.name, &self.tenant, "roles");
        if let Some(id) = id {
            if !roles::is_role_id(id) {
                let shape = "the role id must be 3 to 63 characters of a-z, 0-9 and '-', \
                     starting with a letter";
                check.bad("role.name", shape);
            } else if roles::BUILT_IN.contains(&id) {
                check.bad("role.name", "names a built-in role, which is never stored");
            } else if self.custom_roles.contains(id) {
                check.bad("role.name", "repeats an earlier role");
            }
        }
        check.display_name("role.display_name", &role.display_name);
        // As `CreateRole` holds it: a longer one could make a batch of the tenant's next
        // export larger than a gRPC message may be.
        if role.description.chars().count() > roles::MAX_DESCRIPTION_CHARS {
            let limit = roles::MAX_DESCRIPTION_CHARS;
            check.bad(
                "role.description",
                format!("must be at most {limit} characters"),
            );
        }
        let permissions = check.set("role.permissions", &role.permissions);
        check.in_catalogue("role.permissions", &role.permissions, &self.roles);
        let create_time = check.time("role.create_time", &role.create_time);
        let update_time = check.time("role.update_time", &role.update_time);
        if check.count() > before {
            return None;
        }
        let id = id?.to_owned();
        self.custom_roles.insert(id.clone());
        Some(RoleRecord {
            tenant_id: self.tenant.clone(),
            id,
            display_name: role.display_name.clone(),
            description: role.description.clone(),
            permissions,
            built_in: false,
            create_time,
            update_time,
        })
    }

    fn user_record(
        &self,
        user: &ExportedUser,
        check: &mut Check<'_>,
    ) -> Option<(UserRecord, String)> {
        let before = check.count();
        let id = check.child_id("user.name", &user.name, &self.tenant, "users");
        if id.is_some_and(|id| !is_uuid(id)) {
            check.bad("user.name", "the user id must be a UUID in lower case");
        }
        let email_ok = user.email.contains('@')
            && user.email.chars().count() <= crate::users::EMAIL_MAX_LEN
            && user.email == user.email.trim().to_lowercase();
        if !email_ok {
            check.bad("user.email", "must be an email address in lower case");
        }
        check.display_name("user.display_name", &user.display_name);
        let state = match UserState::try_from(user.state) {
            Ok(UserState::Unspecified) | Err(_) => None,
            Ok(state) => Some(state),
        };
        if state.is_none() {
            check.bad("user.state", format!("unknown state {}", user.state));
        }
        let roles = check.set("user.roles", &user.roles);
        for (index, role) in user.roles.iter().enumerate() {
            if !roles::BUILT_IN.contains(&role.as_str()) && !self.custom_roles.contains(role) {
                check.bad(
                    &format!("user.roles[{index}]"),
                    "is neither a built-in role nor a custom role earlier in the stream",
                );
            }
        }
        if !user.password_hash.starts_with("$argon2id$") {
            check.bad(
                "user.password_hash",
                "must be an Argon2id PHC string ($argon2id$...)",
            );
        }
        let create_time = check.time("user.create_time", &user.create_time);
        let update_time = check.time("user.update_time", &user.update_time);
        if check.count() > before {
            return None;
        }
        let record = UserRecord {
            id: id?.to_owned(),
            tenant_id: self.tenant.clone(),
            email: user.email.clone(),
            display_name: user.display_name.clone(),
            state: state?,
            roles: roles.into_iter().collect(),
            create_time: create_time?,
            update_time: update_time?,
            // A lock is a passing state of sign-ins, not exported: a restored user has none.
            locked_until: None,
        };
        Some((record, user.password_hash.clone()))
    }

    fn api_key_record(&self, key: &ExportedApiKey, check: &mut Check<'_>) -> Option<ApiKeyRecord> {
        let before = check.count();
        let id = check.child_id("api_key.name", &key.name, &self.tenant, "apiKeys");
        if id.is_some_and(|id| !is_key_id(id)) {
            check.bad(
                "api_key.name",
                "the key id must be 32 lower-case hex digits",
            );
        }
        let created_with = (!key.created_with.is_empty()).then(|| key.created_with.clone());
        if created_with.is_some() && !names_a_maker(&key.created_with, &self.tenant) {
            check.bad(
                "api_key.created_with",
                format!(
                    "must be empty or a key of tenants/{} or of tenants/{SYSTEM_TENANT}, \
                     `tenants/{{tenant_id}}/apiKeys/{{key_id}}`",
                    self.tenant
                ),
            );
        }
        check.display_name("api_key.display_name", &key.display_name);
        let scopes = check.set("api_key.scopes", &key.scopes);
        if scopes.is_empty() {
            check.bad("api_key.scopes", "must name at least one permission");
        }
        // Also refuses `*`: only the system tenant's operator keys hold it, and the system
        // tenant is never imported.
        check.in_catalogue("api_key.scopes", &key.scopes, &self.roles);
        let owner = api_keys::parse_owner(&key.owner, &self.tenant);
        if owner.is_none() {
            check.bad(
                "api_key.owner",
                format!(
                    "must be tenants/{0} or a user of it, tenants/{0}/users/{{user_id}}",
                    self.tenant
                ),
            );
        }
        if key.secret_sha256.len() != 32 {
            check.bad("api_key.secret_sha256", "must be a SHA-256 hash, 32 bytes");
        }
        let create_time = check.time("api_key.create_time", &key.create_time);
        let expire_time = check.time("api_key.expire_time", &key.expire_time);
        let revoke_time = check.optional_time("api_key.revoke_time", &key.revoke_time);
        let last_use_time = check.optional_time("api_key.last_use_time", &key.last_use_time);
        if check.count() > before {
            return None;
        }
        Some(ApiKeyRecord {
            id: id?.to_owned(),
            tenant_id: self.tenant.clone(),
            display_name: key.display_name.clone(),
            secret_hash: key.secret_sha256.clone(),
            scopes: scopes.into_iter().collect(),
            owner_user_id: owner?,
            created_with,
            create_time: create_time?,
            expire_time: expire_time?,
            revoke_time,
            last_use_time,
        })
    }
}

/// Collects the violations of one record, its fields named under `field`.
struct Check<'a> {
    chunk: usize,
    field: &'a str,
    violations: &'a mut Vec<FieldViolation>,
}

impl Check<'_> {
    fn count(&self) -> usize {
        self.violations.len()
    }

    fn push(&mut self, violation: FieldViolation) {
        self.violations.push(FieldViolation::new(
            violation.field,
            format!("chunk {}: {}", self.chunk, violation.description),
        ));
    }

    fn bad(&mut self, field: &str, description: impl Into<String>) {
        let path = match field {
            "" => self.field.to_owned(),
            field => format!("{}.{field}", self.field),
        };
        self.push(FieldViolation::new(path, description));
    }

    /// The id in `name` = `tenants/{tenant}/{collection}/{id}`.
    fn child_id<'n>(
        &mut self,
        field: &str,
        name: &'n str,
        tenant: &TenantId,
        collection: &str,
    ) -> Option<&'n str> {
        let found = name
            .strip_prefix("tenants/")
            .and_then(|rest| rest.split_once(&format!("/{collection}/")));
        match found {
            None => {
                let shape = format!("must be `tenants/{{tenant_id}}/{collection}/{{id}}`");
                self.bad(field, shape);
                None
            }
            Some((owner, _)) if owner != tenant.as_str() => {
                self.bad(
                    field,
                    format!(
                        "belongs to tenants/{}, not to tenants/{tenant}",
                        palisade_grpc::echoed(owner)
                    ),
                );
                None
            }
            Some((_, id)) => Some(id),
        }
    }

    fn display_name(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() || value.chars().count() > 200 {
            self.bad(field, "must be 1 to 200 characters");
        }
    }

    /// Distinct, non-empty values.
    fn set(&mut self, field: &str, values: &[String]) -> BTreeSet<String> {
        let set: BTreeSet<String> = values.iter().cloned().collect();
        if set.len() != values.len() || set.contains("") {
            self.bad(field, "must hold distinct, non-empty values");
        }
        set
    }

    /// Each of `permissions` is one of the catalogue's.
    fn in_catalogue(&mut self, field: &str, permissions: &[String], roles: &Roles) {
        for (index, permission) in permissions.iter().enumerate() {
            if !roles.in_catalogue(permission) {
                self.bad(
                    &format!("{field}[{index}]"),
                    format!(
                        "unknown permission {:?}: not in this server's catalogue",
                        palisade_grpc::echoed(permission)
                    ),
                );
            }
        }
    }

    fn time(&mut self, field: &str, value: &Option<prost_types::Timestamp>) -> Option<i64> {
        let micros = value.as_ref().and_then(micros_in_range);
        if micros.is_none() {
            self.bad(field, "is required: a valid timestamp");
        }
        micros
    }

    fn optional_time(
        &mut self,
        field: &str,
        value: &Option<prost_types::Timestamp>,
    ) -> Option<i64> {
        value.as_ref().and_then(|_| self.time(field, value))
    }
}

/// Whether `name` may have made a key of `tenant`: a key of `tenant` itself or a platform
/// operator's (only those make keys in another tenant).
fn names_a_maker(name: &str, tenant: &TenantId) -> bool {
    name.strip_prefix("tenants/")
        .and_then(|rest| rest.split_once("/apiKeys/"))
        .is_some_and(|(owner, id)| {
            (owner == tenant.as_str() || owner == SYSTEM_TENANT) && is_key_id(id)
        })
}

/// A key id in its canonical form: 32 lower-case hex digits.
fn is_key_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_uuid(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|uuid| uuid.to_string() == id)
}
