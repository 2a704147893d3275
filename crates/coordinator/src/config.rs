//! The coordinator's configuration file (`coordinator.toml`, written by `veil init`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use veil_proto::ConfigError;
use veil_proto::roster::RosterFile;
use veil_proto::tls::{TlsFiles, TlsMaterial};

use crate::CoordinatorConfig;

/// The file as written. Relative paths are relative to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorFile {
    /// Listening address.
    pub listen: SocketAddr,
    /// SQLite database.
    pub database: PathBuf,
    /// The consortium roster.
    pub roster: PathBuf,
    /// CA certificate.
    pub ca: PathBuf,
    /// The coordinator's certificate.
    pub cert: PathBuf,
    /// The coordinator's key.
    pub key: PathBuf,
    /// The Ed25519 seed (hex) that signs the audit log.
    pub identity: PathBuf,
    /// Seconds a party may stay silent in a round stage.
    #[serde(default = "default_stage_timeout")]
    pub stage_timeout_secs: u64,
    /// Seconds parties have to answer an offer.
    #[serde(default = "default_offer_timeout")]
    pub offer_timeout_secs: u64,
    /// The most parties that may collude with the coordinator that every round tolerates (c):
    /// thresholds and survivor quorums are sized for it. Parties refuse rounds below their own.
    #[serde(default = "default_max_corrupt")]
    pub max_corrupt: u32,
}

fn default_max_corrupt() -> u32 {
    veil_protocol::params::DEFAULT_MAX_CORRUPT as u32
}

fn default_stage_timeout() -> u64 {
    30
}

fn default_offer_timeout() -> u64 {
    10
}

impl CoordinatorFile {
    /// Reads the file and resolves its paths.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut f: CoordinatorFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in
            [&mut f.database, &mut f.roster, &mut f.ca, &mut f.cert, &mut f.key, &mut f.identity]
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if f.stage_timeout_secs == 0 || f.offer_timeout_secs == 0 {
            return Err(ConfigError::Parse {
                path: path.display().to_string(),
                message: "timeouts must be at least one second".into(),
            });
        }
        Ok(f)
    }

    /// The runtime configuration; `plaintext` drops TLS (dangerous).
    pub fn into_config(self, plaintext: bool) -> Result<CoordinatorConfig, ConfigError> {
        let tls = if plaintext {
            None
        } else {
            Some(TlsMaterial::load(&TlsFiles { ca: self.ca, cert: self.cert, key: self.key })?)
        };
        let text = std::fs::read_to_string(&self.identity).map_err(|source| ConfigError::Read {
            path: self.identity.display().to_string(),
            source,
        })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| ConfigError::Parse {
            path: self.identity.display().to_string(),
            message: "the identity key must be 64 hex digits".into(),
        })?;
        let identity = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.fill(0);
        let roster = RosterFile::load(&self.roster)?;
        if roster.coordinator_key != hex::encode(identity.verifying_key().as_bytes()) {
            return Err(ConfigError::Parse {
                path: self.identity.display().to_string(),
                message: "this identity key is not the coordinator key the roster lists".into(),
            });
        }
        Ok(CoordinatorConfig {
            identity,
            database: self.database,
            roster,
            tls,
            stage_timeout: Duration::from_secs(self.stage_timeout_secs),
            offer_timeout: Duration::from_secs(self.offer_timeout_secs),
            max_corrupt: self.max_corrupt as usize,
            inbound_tap: None,
        })
    }
}
