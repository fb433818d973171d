//! The wire form of the context: `palisade-*` metadata keys and `x-request-id` (DESIGN §4.2).

use http::{HeaderMap, HeaderValue};

use crate::{
    ClientOrigin, Error, Principal, PrincipalKind, RequestId, Result, TenantContext, TenantId,
};

pub const HEADER_TENANT_ID: &str = "palisade-tenant-id";
pub const HEADER_PRINCIPAL_ID: &str = "palisade-principal-id";
pub const HEADER_PRINCIPAL_TYPE: &str = "palisade-principal-type";
/// The sign-in session of a user's access token (see `Principal::session_id`).
pub const HEADER_SESSION_ID: &str = "palisade-session-id";
pub const HEADER_REQUEST_ID: &str = "x-request-id";
/// Where the external call came from, as the gateway saw it (audit events record it).
pub const HEADER_CLIENT_IP: &str = "palisade-client-ip";
pub const HEADER_CLIENT_USER_AGENT: &str = "palisade-client-user-agent";

/// The longest user agent carried on; longer ones are cut (they are for humans reading logs).
const MAX_USER_AGENT: usize = 256;

/// Whether a client asserted any context key (the request id is not a tenant assertion).
pub(crate) fn asserts_context(headers: &HeaderMap) -> bool {
    [
        HEADER_TENANT_ID,
        HEADER_PRINCIPAL_ID,
        HEADER_PRINCIPAL_TYPE,
        HEADER_SESSION_ID,
        HEADER_CLIENT_IP,
        HEADER_CLIENT_USER_AGENT,
    ]
    .iter()
    .any(|key| headers.contains_key(*key))
}

/// Reads the context keys; `Ok(None)` when no tenant is asserted.
pub(crate) fn read_context(headers: &HeaderMap) -> Result<Option<TenantContext>> {
    let tenant = header_str(headers, HEADER_TENANT_ID)?;
    let principal_id = header_str(headers, HEADER_PRINCIPAL_ID)?;
    let principal_type = header_str(headers, HEADER_PRINCIPAL_TYPE)?;
    let session_id = header_str(headers, HEADER_SESSION_ID)?
        .map(|raw| {
            // Sessions are token families, named by UUIDs.
            uuid::Uuid::try_parse(raw)
                .map(|_| raw.to_owned())
                .map_err(|_| Error::InvalidSessionId(raw.to_owned()))
        })
        .transpose()?;
    if session_id.is_some() && principal_id.is_none() {
        return Err(Error::Incomplete(HEADER_PRINCIPAL_ID, HEADER_SESSION_ID));
    }
    let Some(tenant) = tenant else {
        return match (principal_id, principal_type) {
            (None, None) => Ok(None),
            _ => Err(Error::Incomplete(HEADER_TENANT_ID, HEADER_PRINCIPAL_ID)),
        };
    };
    let principal = match (principal_id, principal_type) {
        (Some(id), Some(kind)) => Some(Principal {
            id: id.to_owned(),
            kind: PrincipalKind::parse(kind)?,
            session_id,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::Incomplete(
                HEADER_PRINCIPAL_TYPE,
                HEADER_PRINCIPAL_ID,
            ));
        }
        (None, Some(_)) => {
            return Err(Error::Incomplete(
                HEADER_PRINCIPAL_ID,
                HEADER_PRINCIPAL_TYPE,
            ));
        }
    };
    Ok(Some(TenantContext {
        tenant_id: TenantId::parse(tenant)?,
        principal,
    }))
}

pub(crate) fn read_request_id(headers: &HeaderMap) -> Option<RequestId> {
    let raw = headers.get(HEADER_REQUEST_ID)?.to_str().ok()?;
    // Bounded and printable, so a client cannot smuggle junk into logs and audit records.
    let acceptable =
        !raw.is_empty() && raw.len() <= 128 && raw.bytes().all(|b| b.is_ascii_graphic());
    acceptable.then(|| RequestId(raw.to_owned()))
}

/// Writes the context (and request id) into outgoing metadata, replacing what was there.
pub fn write_context(
    headers: &mut HeaderMap,
    context: Option<&TenantContext>,
    request_id: Option<&RequestId>,
) {
    for key in [
        HEADER_TENANT_ID,
        HEADER_PRINCIPAL_ID,
        HEADER_PRINCIPAL_TYPE,
        HEADER_SESSION_ID,
    ] {
        headers.remove(key);
    }
    if let Some(context) = context {
        insert(headers, HEADER_TENANT_ID, context.tenant_id.as_str());
        if let Some(principal) = &context.principal {
            insert(headers, HEADER_PRINCIPAL_ID, &principal.id);
            insert(headers, HEADER_PRINCIPAL_TYPE, principal.kind.as_str());
            if let Some(session_id) = &principal.session_id {
                insert(headers, HEADER_SESSION_ID, session_id);
            }
        }
    }
    if let Some(request_id) = request_id {
        insert(headers, HEADER_REQUEST_ID, &request_id.0);
    }
}

/// Reads the client origin a trusted peer passed on; malformed values are dropped (the origin
/// is informational, never a reason to refuse a call).
pub(crate) fn read_origin(headers: &HeaderMap) -> ClientOrigin {
    let text = |key| {
        headers
            .get(key)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    ClientOrigin {
        ip: text(HEADER_CLIENT_IP).filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()),
        user_agent: text(HEADER_CLIENT_USER_AGENT),
    }
}

/// Writes the client origin into outgoing metadata (the gateway, and calls made while
/// handling a request), replacing what was there.
pub fn write_origin(headers: &mut HeaderMap, origin: &ClientOrigin) {
    headers.remove(HEADER_CLIENT_IP);
    headers.remove(HEADER_CLIENT_USER_AGENT);
    if let Some(ip) = &origin.ip {
        insert(headers, HEADER_CLIENT_IP, ip);
    }
    if let Some(agent) = &origin.user_agent {
        // Visible ASCII only, cut at a character boundary: it came from an untrusted client.
        let clean: String = agent
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(MAX_USER_AGENT)
            .collect();
        if !clean.is_empty() {
            insert(headers, HEADER_CLIENT_USER_AGENT, &clean);
        }
    }
}

/// Removes every client-sent `palisade-*` key, including the `grpc-metadata-palisade-*` form
/// that REST gateways turn into metadata. The gateway calls this before adding its own.
pub fn strip_client_context(headers: &mut HeaderMap) {
    let doomed: Vec<_> = headers
        .keys()
        .filter(|key| {
            let key = key.as_str();
            key.starts_with("palisade-") || key.starts_with("grpc-metadata-palisade-")
        })
        .cloned()
        .collect();
    for key in doomed {
        headers.remove(key);
    }
}

fn header_str<'h>(headers: &'h HeaderMap, key: &'static str) -> Result<Option<&'h str>> {
    headers
        .get(key)
        .map(|value| value.to_str().map_err(|_| Error::NotAscii(key)))
        .transpose()
}

/// Writes the request id alone (a call that states its own tenant context keeps it).
pub(crate) fn write_request_id(headers: &mut HeaderMap, request_id: &RequestId) {
    insert(headers, HEADER_REQUEST_ID, &request_id.0);
}

fn insert(headers: &mut HeaderMap, key: &'static str, value: &str) {
    // Every value written here was validated on the way in (ids, enums, uuids), so it is ASCII.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (key, value) in pairs {
            map.insert(*key, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn round_trip() {
        let context = TenantContext {
            tenant_id: TenantId::parse("acme").unwrap(),
            principal: Some(Principal::new("key-1", PrincipalKind::ApiKey)),
        };
        let mut map = HeaderMap::new();
        write_context(&mut map, Some(&context), Some(&RequestId("r-1".into())));
        assert_eq!(read_context(&map).unwrap(), Some(context));
        assert_eq!(read_request_id(&map), Some(RequestId("r-1".into())));
    }

    #[test]
    fn a_user_session_round_trips_and_a_later_context_without_one_clears_it() {
        let session = "0192f5a2-7c1e-7a4b-9d7e-0a1b2c3d4e5f";
        let mut context = TenantContext {
            tenant_id: TenantId::parse("acme").unwrap(),
            principal: Some(Principal {
                session_id: Some(session.to_owned()),
                ..Principal::new("u1", PrincipalKind::User)
            }),
        };
        let mut map = HeaderMap::new();
        write_context(&mut map, Some(&context), None);
        assert_eq!(map[HEADER_SESSION_ID], session);
        assert_eq!(read_context(&map).unwrap(), Some(context.clone()));
        context.principal = Some(Principal::new("key-1", PrincipalKind::ApiKey));
        write_context(&mut map, Some(&context), None);
        assert!(!map.contains_key(HEADER_SESSION_ID));
    }

    #[test]
    fn rejects_partial_or_malformed_context() {
        assert!(read_context(&headers(&[(HEADER_PRINCIPAL_ID, "u1")])).is_err());
        assert!(
            read_context(&headers(&[
                (HEADER_TENANT_ID, "acme"),
                (HEADER_PRINCIPAL_ID, "u1")
            ]))
            .is_err()
        );
        assert!(read_context(&headers(&[(HEADER_TENANT_ID, "Not A Tenant")])).is_err());
        let bad_kind = headers(&[
            (HEADER_TENANT_ID, "acme"),
            (HEADER_PRINCIPAL_ID, "u"),
            (HEADER_PRINCIPAL_TYPE, "root"),
        ]);
        assert!(read_context(&bad_kind).is_err());
        let bad_session = headers(&[
            (HEADER_TENANT_ID, "acme"),
            (HEADER_PRINCIPAL_ID, "u"),
            (HEADER_PRINCIPAL_TYPE, "user"),
            (HEADER_SESSION_ID, "not-a-uuid"),
        ]);
        assert!(read_context(&bad_session).is_err());
        let session_without_principal = headers(&[
            (HEADER_TENANT_ID, "acme"),
            (HEADER_SESSION_ID, "0192f5a2-7c1e-7a4b-9d7e-0a1b2c3d4e5f"),
        ]);
        assert!(read_context(&session_without_principal).is_err());
        assert_eq!(read_context(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn strips_every_client_sent_palisade_key() {
        let mut map = headers(&[
            (HEADER_TENANT_ID, "other"),
            ("grpc-metadata-palisade-tenant-id", "other"),
            ("palisade-anything", "x"),
            ("authorization", "ApiKey pal_x"),
        ]);
        strip_client_context(&mut map);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("authorization"));
    }

    #[test]
    fn request_ids_are_bounded_and_printable() {
        assert!(read_request_id(&headers(&[(HEADER_REQUEST_ID, &"a".repeat(129))])).is_none());
        assert!(read_request_id(&headers(&[(HEADER_REQUEST_ID, "has space")])).is_none());
    }
}
