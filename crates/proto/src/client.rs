//! Consumer configuration (`consumer.toml`, written by `veil init`) and connecting to the
//! coordinator.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tonic::transport::{Channel, Endpoint};

use crate::ConfigError;
use crate::tls::{TlsFiles, TlsMaterial};

/// The consumer's file. Relative paths are relative to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerFile {
    /// The consumer's name in the roster.
    pub name: String,
    /// The coordinator's URL.
    pub coordinator: String,
    /// CA certificate.
    pub ca: PathBuf,
    /// The consumer's certificate (its credential).
    pub cert: PathBuf,
    /// The consumer's key.
    pub key: PathBuf,
    /// The file holding the seed of the key that signs its jobs (64 hex digits), whose public
    /// half the roster lists.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
}

impl ConsumerFile {
    /// Reads the file and resolves its paths.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::read(path)?;
        let mut f: ConsumerFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut f.ca, &mut f.cert, &mut f.key].into_iter().chain(f.signing_key.as_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(f)
    }

    /// The key that signs its jobs. Fails, saying what to do, when the file names none.
    pub fn signer(
        &self,
        check: crate::submission::PlanCheck,
    ) -> Result<crate::submission::Signer, ConfigError> {
        let path = self.signing_key.as_ref().ok_or_else(|| ConfigError::Parse {
            path: format!("the configuration of consumer {}", self.name),
            message: "it names no signing_key; parties take part only in jobs their consumer \
                      signed: add `signing_key = \"<file>\"` with the key whose public half the \
                      roster lists for this consumer (veil init writes both)"
                .into(),
        })?;
        crate::submission::Signer::load(self.name.clone(), path, check)
    }

    /// The TLS material it names.
    pub fn tls(&self) -> Result<TlsMaterial, ConfigError> {
        TlsMaterial::load(&TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        })
    }
}

/// Opens a channel to the coordinator, over mutual TLS unless `tls` is `None`.
pub async fn connect(url: &str, tls: Option<&TlsMaterial>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("invalid coordinator address {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.client_config()).map_err(|e| format!("TLS: {e}"))?;
    }
    endpoint.connect().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
        let hint = if cause.contains("invalid peer certificate") {
            "\n  hint: the server's certificate is not signed by the CA in this configuration: is \
             the address this consortium's coordinator?"
        } else {
            ""
        };
        format!("cannot reach the coordinator at {url}: {e}{cause}{hint}")
    })
}
