//! The dev PKI: files, idempotence and the certificates' contents.

use std::fs;
use std::path::Path;

use palisade_tls::{CertPaths, DEFAULT_TRUST_DOMAIN, Error, MeshTls, SpiffeId, pki};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

fn pem_der(path: &Path) -> Vec<u8> {
    let pem = fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    pem.contents
}

#[tokio::test]
async fn init_creates_files_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    pki::init(&certs, DEFAULT_TRUST_DOMAIN, &["identity", "gateway"], &[]).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&certs).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the certs dir is its owner's alone");
    }

    for file in [
        "ca.crt",
        "ca.key",
        "identity.crt",
        "identity.key",
        "gateway.crt",
        "gateway.key",
    ] {
        assert!(certs.join(file).is_file(), "{file}");
    }
    #[cfg(unix)]
    for key in ["ca.key", "identity.key", "gateway.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(certs.join(key)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    let ca = fs::read(certs.join("ca.crt")).unwrap();
    let identity = fs::read(certs.join("identity.crt")).unwrap();
    pki::init(
        &certs,
        DEFAULT_TRUST_DOMAIN,
        &["identity", "compliance"],
        &[],
    )
    .unwrap();
    assert_eq!(fs::read(certs.join("ca.crt")).unwrap(), ca);
    assert_eq!(fs::read(certs.join("identity.crt")).unwrap(), identity);
    assert!(certs.join("compliance.crt").is_file());

    // The new leaf is signed by the CA that was already there.
    let tls = MeshTls::load(CertPaths::in_dir(&certs, "compliance"))
        .await
        .unwrap();
    assert_eq!(tls.identity().component_name(), Some("compliance"));
}

#[test]
fn component_certificate_has_spiffe_id_and_mesh_sans() {
    let dir = tempfile::tempdir().unwrap();
    let extra = vec!["identity.palisade.svc".to_owned(), "10.0.0.7".to_owned()];
    pki::init(dir.path(), DEFAULT_TRUST_DOMAIN, &["identity"], &extra).unwrap();

    let der = pem_der(&dir.path().join("identity.crt"));
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => format!("uri:{uri}"),
            GeneralName::DNSName(dns) => format!("dns:{dns}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            other => format!("{other}"),
        })
        .collect();
    assert_eq!(
        sans,
        [
            "uri:spiffe://palisade.local/component/identity",
            "dns:identity",
            "dns:localhost",
            "ip:[127, 0, 0, 1]",
            "ip:[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]",
            "dns:identity.palisade.svc",
            "ip:[10, 0, 0, 7]",
        ]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!cert.is_ca());
    let validity = cert.validity().time_to_expiration().unwrap();
    assert!(validity.whole_days() >= 364 && validity.whole_days() <= 366);

    let ca_der = pem_der(&dir.path().join("ca.crt"));
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    assert!(ca.is_ca());
    assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
    assert!(ca.validity().time_to_expiration().unwrap().whole_days() >= 3649);
    assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
}

#[test]
fn issue_overwrites_with_any_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), DEFAULT_TRUST_DOMAIN, &["identity"], &[]).unwrap();
    let before = fs::read(dir.path().join("identity.crt")).unwrap();
    let id = SpiffeId::parse("spiffe://palisade.local/workload/untrusted").unwrap();
    pki::issue(dir.path(), "identity", &id, &[]).unwrap();
    let der = pem_der(&dir.path().join("identity.crt"));
    assert_ne!(fs::read(dir.path().join("identity.crt")).unwrap(), before);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.value.general_names.contains(&GeneralName::URI(
        "spiffe://palisade.local/workload/untrusted"
    )));
}

#[test]
fn rejects_bad_names_and_missing_ca() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", "ca", "../escape", ".hidden", "a b"] {
        let err = pki::init(dir.path(), DEFAULT_TRUST_DOMAIN, &[name], &[]).unwrap_err();
        assert!(
            matches!(err, Error::InvalidName(_) | Error::InvalidSpiffeId { .. }),
            "{name}: {err}"
        );
    }
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written"
    );

    let id = SpiffeId::component(DEFAULT_TRUST_DOMAIN, "x");
    let err = pki::issue(dir.path(), "x", &id, &[]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    pki::init(dir.path(), DEFAULT_TRUST_DOMAIN, &["identity"], &[]).unwrap();
    fs::remove_file(dir.path().join("identity.key")).unwrap();
    let err = pki::init(dir.path(), DEFAULT_TRUST_DOMAIN, &["identity"], &[]).unwrap_err();
    assert!(matches!(err, Error::IncompleteKeyPair { .. }), "{err}");
}

#[tokio::test]
async fn concurrent_inits_agree_on_one_ca() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        // Two `palisade dev`s (or an init job and a developer) starting at once.
        let start = std::sync::Arc::new(std::sync::Barrier::new(6));
        let inits: Vec<_> = (0..6)
            .map(|_| {
                let (certs, start) = (certs.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    pki::init(&certs, DEFAULT_TRUST_DOMAIN, &["identity", "gateway"], &[])
                })
            })
            .collect();
        for init in inits {
            init.join().unwrap().unwrap();
        }
        // Every leaf chains to the CA on disk, and the CA key on disk signs for it.
        let later = SpiffeId::component(DEFAULT_TRUST_DOMAIN, "later");
        pki::issue(&certs, "later", &later, &[]).unwrap();
        for name in ["identity", "gateway", "later"] {
            let loaded = MeshTls::load(CertPaths::in_dir(&certs, name)).await;
            assert!(loaded.is_ok(), "{name}: {:?}", loaded.err());
        }
    }
}
