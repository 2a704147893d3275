//! TLS material: loading PEM files, certificate fingerprints, and tonic configurations for
//! mutual TLS.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::ConfigError;

/// The name the coordinator's certificate is issued for and clients check.
pub const COORDINATOR_NAME: &str = "localhost";

/// Paths of a member's TLS material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The consortium CA certificate (PEM).
    pub ca: PathBuf,
    /// This member's certificate (PEM).
    pub cert: PathBuf,
    /// This member's private key (PEM).
    pub key: PathBuf,
}

/// Loaded TLS material.
#[derive(Clone)]
pub struct TlsMaterial {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial { key: [redacted] }")
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })
}

impl TlsMaterial {
    /// Reads the three files.
    pub fn load(files: &TlsFiles) -> Result<Self, ConfigError> {
        Ok(Self {
            ca: read_bytes(&files.ca)?,
            cert: read_bytes(&files.cert)?,
            key: read_bytes(&files.key)?,
        })
    }

    /// From PEM text held in memory.
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Self {
        Self {
            ca: ca.as_bytes().to_vec(),
            cert: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
        }
    }

    /// Server configuration: present our certificate, require a client certificate issued by
    /// the consortium CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// Client configuration: trust only the consortium CA, present our certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(COORDINATOR_NAME)
    }

    /// SHA-256 of our certificate's DER, hex.
    pub fn fingerprint(&self) -> Result<String, String> {
        pem_fingerprint(&self.cert)
    }
}

/// SHA-256 of a DER certificate, hex: how the roster names members.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The fingerprint of the first certificate in a PEM file's text.
pub fn pem_fingerprint(pem: &[u8]) -> Result<String, String> {
    let der =
        CertificateDer::from_pem_slice(pem).map_err(|e| format!("no certificate in PEM: {e}"))?;
    Ok(fingerprint(&der))
}
