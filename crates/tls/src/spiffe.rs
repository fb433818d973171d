//! SPIFFE IDs: the names components carry in their certificates' URI SANs.

use std::fmt;

use x509_parser::extensions::GeneralName;

use crate::{Error, Result};

const SCHEME: &str = "spiffe://";
/// The SPIFFE spec caps IDs at 2048 bytes; longer input is rejected before any other check.
const MAX_LEN: usize = 2048;
const COMPONENT_PREFIX: &str = "component/";

/// A SPIFFE ID, `spiffe://<trust_domain>/<path>`.
///
/// The path is kept without its leading `/`, so a component's path reads `component/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

impl SpiffeId {
    /// The ID of mesh component `name`: `spiffe://<trust_domain>/component/<name>`.
    ///
    /// Inputs are not validated; they come from configuration that [`SpiffeId::parse`]
    /// checks again wherever the ID is read back from a certificate.
    pub fn component(trust_domain: &str, name: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.to_owned(),
            path: format!("{COMPONENT_PREFIX}{name}"),
        }
    }

    /// Parses and validates a SPIFFE URI, following the SPIFFE ID spec: lowercase `spiffe`
    /// scheme, a trust domain of `[a-z0-9._-]`, and a non-empty path of `[A-Za-z0-9._-]`
    /// segments with no empty, `.` or `..` segment, no query, fragment, port or user info.
    pub fn parse(uri: &str) -> Result<SpiffeId> {
        let invalid = |reason| Error::InvalidSpiffeId {
            uri: uri.to_owned(),
            reason,
        };
        if uri.len() > MAX_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("scheme must be spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("path is empty"))?;
        if trust_domain.is_empty() {
            return Err(invalid("trust domain is empty"));
        }
        if !trust_domain.bytes().all(is_trust_domain_byte) {
            return Err(invalid(
                "trust domain may contain only a-z, 0-9, '.', '-' and '_'",
            ));
        }
        if path.is_empty() {
            return Err(invalid("path is empty"));
        }
        for segment in path.split('/') {
            match segment {
                "" => return Err(invalid("path has an empty segment")),
                "." | ".." => return Err(invalid("path has a '.' or '..' segment")),
                _ if !segment.bytes().all(is_path_byte) => {
                    return Err(invalid(
                        "path may contain only A-Z, a-z, 0-9, '.', '-' and '_'",
                    ));
                }
                _ => {}
            }
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            path: path.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path without its leading `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `Some(name)` iff the path is exactly `component/<name>`.
    pub fn component_name(&self) -> Option<&str> {
        self.path
            .strip_prefix(COMPONENT_PREFIX)
            .filter(|name| !name.is_empty() && !name.contains('/'))
    }
}

/// The SPIFFE ID in a DER certificate's URI SANs, as an X509-SVID carries it: exactly one URI
/// SAN, a `spiffe://` one (the X509-SVID spec allows no other URI beside it, whatever its
/// scheme). The error is a reason for a log line or a load error.
pub(crate) fn from_certificate(der: &[u8]) -> std::result::Result<SpiffeId, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .ok_or("no subject alternative names")?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => SpiffeId::parse(uri).map_err(|e| e.to_string()),
        (None, _) => Err("no spiffe uri san".to_owned()),
        (Some(_), Some(_)) => Err("more than one uri san".to_owned()),
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.trust_domain, self.path)
    }
}

fn is_trust_domain_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    /// A self-signed certificate whose URI SANs are `uris`.
    fn certificate_with(uris: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["identity".to_owned()]).unwrap();
        for uri in uris {
            let uri = (*uri).to_owned().try_into().unwrap();
            params.subject_alt_names.push(SanType::URI(uri));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_carries_exactly_one_uri_and_it_is_a_spiffe_id() {
        let id = "spiffe://palisade.local/component/identity";
        assert_eq!(
            from_certificate(&certificate_with(&[id]))
                .unwrap()
                .to_string(),
            id
        );
        for uris in [
            vec![],
            vec![id, "https://identity.example.com"],
            vec!["SPIFFE://palisade.local/component/gateway", id],
            vec![id, "spiffe://palisade.local/component/gateway"],
            vec!["https://identity.example.com"],
        ] {
            assert!(
                from_certificate(&certificate_with(&uris)).is_err(),
                "{uris:?}"
            );
        }
    }

    #[test]
    fn component_displays_and_parses_back() {
        let id = SpiffeId::component("palisade.local", "identity");
        assert_eq!(id.to_string(), "spiffe://palisade.local/component/identity");
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(id.trust_domain(), "palisade.local");
        assert_eq!(id.path(), "component/identity");
        assert_eq!(id.component_name(), Some("identity"));
    }

    #[test]
    fn non_component_paths_have_no_component_name() {
        for uri in [
            "spiffe://td/workload/untrusted",
            "spiffe://td/component",
            "spiffe://td/component/a/b",
            "spiffe://td/components/a",
        ] {
            let id = SpiffeId::parse(uri).unwrap();
            assert_eq!(id.to_string(), uri);
            assert_eq!(id.component_name(), None, "{uri}");
        }
    }

    #[test]
    fn rejects_malformed_ids() {
        let long = format!("spiffe://td/{}", "a".repeat(MAX_LEN));
        for uri in [
            "",
            "spiffe://",
            "spiffe://td",
            "spiffe://td/",
            "spiffe:///path",
            "SPIFFE://td/path",
            "https://td/path",
            "spiffe:/td/path",
            "spiffe://Upper.Case/path",
            "spiffe://td:8080/path",
            "spiffe://user@td/path",
            "spiffe://td/a//b",
            "spiffe://td/a/",
            "spiffe://td/./a",
            "spiffe://td/a/..",
            "spiffe://td/a?q=1",
            "spiffe://td/a#frag",
            "spiffe://td/a b",
            "spiffe://td/caf\u{e9}",
            long.as_str(),
        ] {
            let err = SpiffeId::parse(uri).expect_err(uri);
            assert!(matches!(err, Error::InvalidSpiffeId { .. }), "{uri}: {err}");
        }
    }
}
