//! Dev PKI: a mesh CA and one certificate per component, as PEM files in a certs dir.
//!
//! Layout: `ca.crt`, `ca.key`, `<name>.crt`, `<name>.key` (and `.pki.lock`, which writers
//! hold). Production deployments bring their
//! own files in the same layout (cert-manager, user secrets); this module only makes dev ones.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{CertPaths, Error, Result, SpiffeId};

const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(365);
/// Certificates start slightly in the past so that peers with a lagging clock accept them.
const BACKDATE: Duration = Duration::minutes(5);

/// Creates the CA in `dir` if absent, then a component certificate for each of `names` that has
/// none. Idempotent: existing files are never overwritten.
///
/// Component certificates carry the SANs `spiffe://<trust_domain>/component/<name>`, DNS `<name>`,
/// DNS `localhost`, IP `127.0.0.1`, IP `::1` and `extra_dns` (entries that parse as IP addresses
/// become IP SANs); EKU serverAuth and clientAuth; ECDSA P-256 keys; one year of validity.
/// The CA is valid for ten years. Keys are written with mode 0600.
///
/// Concurrent calls on one dir (two `palisade dev`s starting at once) write under its lock
/// ([`lock_dir`]), so they agree on one CA; a dir that already holds everything is only read.
pub fn init(dir: &Path, trust_domain: &str, names: &[&str], extra_dns: &[String]) -> Result<()> {
    // Check everything before writing anything, so a bad name leaves the dir untouched.
    let mut wanted = Vec::new();
    for &name in names {
        validate_name(name)?;
        let spiffe = SpiffeId::parse(&SpiffeId::component(trust_domain, name).to_string())?;
        wanted.push((name, spiffe));
    }
    let missing = || -> Result<Vec<(&str, &SpiffeId)>> {
        let mut missing = Vec::new();
        for (name, spiffe) in &wanted {
            if !leaf_exists(dir, name)? {
                missing.push((*name, spiffe));
            }
        }
        Ok(missing)
    };
    // Without the lock this is only a hint: another init may be between a key and its
    // certificate, which the look under the lock below waits out.
    let (ca_cert, ca_key) = ca_paths(dir);
    let complete = matches!(missing(), Ok(missing) if missing.is_empty());
    if complete && exists(&ca_cert)? && exists(&ca_key)? {
        return Ok(());
    }
    // The owner's alone, like the keys in it (a directory that exists is left as it is).
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|source| io_error(dir, source))?;
    let _lock = lock_dir(dir)?;
    // Looked at again under the lock: another init may have written some of it meanwhile.
    let todo = missing()?;
    let ca = load_or_create_ca(dir, trust_domain)?;
    for (name, spiffe) in todo {
        write_leaf(dir, name, spiffe, extra_dns, &ca)?;
        tracing::info!(%spiffe, dir = %dir.display(), "issued component certificate");
    }
    Ok(())
}

/// Issues one leaf certificate for `name` with the SPIFFE ID `spiffe`, signed by the existing CA
/// in `dir`, overwriting `<name>.crt` and `<name>.key`. SANs and key type are as for [`init`].
///
/// Each file is replaced atomically (key first, then certificate), so a watcher never reads a
/// half-written file; it may briefly see the new key with the old certificate and retries then.
pub fn issue(dir: &Path, name: &str, spiffe: &SpiffeId, extra_dns: &[String]) -> Result<()> {
    validate_name(name)?;
    let _lock = lock_dir(dir)?;
    let ca = load_ca(dir)?;
    write_leaf(dir, name, spiffe, extra_dns, &ca)
}

/// Takes the certs dir's lock (an exclusive advisory lock on `dir/.pki.lock`), waiting for
/// it, until the returned file is dropped. Whoever writes holds it, so a CA key never lands
/// beside another run's CA certificate, nor a leaf key beside another's leaf; the atomic
/// writes' temporary files are not shared either.
fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join(".pki.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| io_error(&path, source))?;
    file.lock().map_err(|source| io_error(&path, source))?;
    Ok(file)
}

/// Whether `name` already has both files; an error if it has only one of them.
fn leaf_exists(dir: &Path, name: &str) -> Result<bool> {
    validate_name(name)?;
    let paths = CertPaths::in_dir(dir, name);
    match (exists(&paths.cert)?, exists(&paths.key)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        _ => Err(Error::IncompleteKeyPair {
            dir: dir.to_owned(),
            name: name.to_owned(),
        }),
    }
}

/// Names become file names and DNS SANs, so they stay within a conservative alphabet, and `ca`
/// is taken by the CA's own files.
fn validate_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name != "ca"
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

fn load_or_create_ca(dir: &Path, trust_domain: &str) -> Result<Issuer<'static, KeyPair>> {
    let (cert, key) = ca_paths(dir);
    match (exists(&cert)?, exists(&key)?) {
        (true, true) => load_ca(dir),
        (false, false) => {
            let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            params.distinguished_name =
                distinguished_name(&format!("palisade mesh ca {trust_domain}"));
            // The dev CA signs leaves directly; no intermediates.
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            set_validity(&mut params, CA_VALIDITY);
            let ca_cert = params.self_signed(&key_pair)?;
            write_atomic(&key, key_pair.serialize_pem().as_bytes(), true)?;
            write_atomic(&cert, ca_cert.pem().as_bytes(), false)?;
            tracing::info!(dir = %dir.display(), "created mesh ca");
            Ok(Issuer::new(params, key_pair))
        }
        _ => Err(Error::IncompleteCa(dir.to_owned())),
    }
}

fn load_ca(dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let (cert, key) = ca_paths(dir);
    let cert_pem = read_string(&cert)?;
    let key_pem = read_string(&key)?;
    let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| Error::Pem {
        path: key.clone(),
        reason: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| Error::Certificate {
        path: cert,
        reason: e.to_string(),
    })
}

fn write_leaf(
    dir: &Path,
    name: &str,
    spiffe: &SpiffeId,
    extra_dns: &[String],
    ca: &Issuer<'static, KeyPair>,
) -> Result<()> {
    let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(name);
    params.subject_alt_names = leaf_sans(name, spiffe, extra_dns)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    let cert = params.signed_by(&key_pair, ca)?;

    let paths = CertPaths::in_dir(dir, name);
    write_atomic(&paths.key, key_pair.serialize_pem().as_bytes(), true)?;
    write_atomic(&paths.cert, cert.pem().as_bytes(), false)
}

fn leaf_sans(name: &str, spiffe: &SpiffeId, extra_dns: &[String]) -> Result<Vec<SanType>> {
    let mut sans = vec![
        SanType::URI(spiffe.to_string().try_into()?),
        SanType::DnsName(name.try_into()?),
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for extra in extra_dns {
        let san = match extra.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(extra.as_str().try_into()?),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palisade");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join("ca.key"))
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(|source| io_error(path, source))
}

fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| io_error(path, source))
}

/// Writes through a temporary file and a rename, so readers see the old or the new content,
/// never a prefix. Private files are created 0600 from the start rather than chmod-ed later.
fn write_atomic(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let write = || -> io::Result<()> {
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}
