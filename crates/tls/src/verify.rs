//! How a mesh client verifies the server it dialled: as webpki does (the chain ends at the mesh
//! CA, the certificate is valid now and names the component as a DNS name), and then by the
//! SPIFFE ID, which must be that component's in the client's own trust domain. The DNS name
//! alone is not enough: the mesh CA also issues certificates to workloads that are not
//! components, and `certs init --dns` puts extra names on every leaf, so a certificate carrying
//! `identity` as a name is not thereby identity.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use crate::{Result, SpiffeId, provider, spiffe};

/// Verifies a mesh server as the component named by the server name it was dialled as.
#[derive(Debug)]
pub(crate) struct ComponentVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    trust_domain: String,
}

impl ComponentVerifier {
    pub(crate) fn new(roots: Arc<RootCertStore>, trust_domain: &str) -> Result<ComponentVerifier> {
        Ok(ComponentVerifier {
            webpki: WebPkiServerVerifier::builder_with_provider(roots, provider()).build()?,
            trust_domain: trust_domain.to_owned(),
        })
    }
}

/// A server whose certificate is not the dialled component's.
#[derive(Debug, thiserror::Error)]
#[error("the server is {found}, not {expected}")]
struct NotTheComponent {
    found: String,
    expected: SpiffeId,
}

impl ServerCertVerifier for ComponentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        // Components are dialled by name; an address names no component.
        let ServerName::DnsName(component) = server_name else {
            return Err(CertificateError::NotValidForName.into());
        };
        let expected = SpiffeId::component(&self.trust_domain, component.as_ref());
        let found = spiffe::from_certificate(end_entity);
        if found.as_ref() == Ok(&expected) {
            return Ok(verified);
        }
        let found = found.map_or_else(|reason| format!("unnamed ({reason})"), |id| id.to_string());
        let refusal = NotTheComponent { found, expected };
        Err(CertificateError::Other(OtherError(Arc::new(refusal))).into())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
