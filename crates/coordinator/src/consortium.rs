//! `veil init`: creating a consortium's keys, certificates, roster and configuration files.
//!
//! One CA signs a certificate for the coordinator (for `localhost` and 127.0.0.1) and one per
//! party and consumer; the coordinator and each party also get an Ed25519 identity key and each
//! consumer one that signs its jobs, whose public halves go into the roster every member trusts. Private keys are written readable by the owner only.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use veil_proto::roster::{ConsumerEntry, PartyEntry, RosterFile};
use veil_proto::tls::{COORDINATOR_NAME, fingerprint};

/// What to create.
#[derive(Clone, Debug)]
pub struct ConsortiumSpec {
    /// The consortium's name.
    pub name: String,
    /// Party names, in id order (ids 0, 1, …).
    pub parties: Vec<String>,
    /// Consumer names and whether each is an administrator.
    pub consumers: Vec<(String, bool)>,
    /// Where the coordinator listens.
    pub coordinator: SocketAddr,
}

/// Errors creating a consortium.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The directory already holds a consortium.
    #[error("{0} already holds a consortium (roster.toml exists); choose an empty directory")]
    Exists(String),
    /// A name is unusable as a file name.
    #[error("invalid name {0:?}: use letters, digits, '-' and '_'")]
    BadName(String),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// Paths of what was created.
#[derive(Clone, Debug)]
pub struct ConsortiumLayout {
    /// The consortium directory.
    pub root: PathBuf,
    /// `roster.toml`.
    pub roster: PathBuf,
    /// `coordinator/coordinator.toml`.
    pub coordinator_config: PathBuf,
    /// `parties/<name>/party.toml`, in id order.
    pub party_configs: Vec<PathBuf>,
    /// `consumers/<name>/consumer.toml`.
    pub consumer_configs: Vec<PathBuf>,
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), InitError> {
    let err = |source| InitError::Write { path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    fs::write(path, contents).map_err(err)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// A fresh Ed25519 key whose seed is written (64 hex digits, owner-only) to `path`.
fn new_key(path: &Path) -> Result<veil_protocol::IdentityKey, InitError> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut());
    let key = veil_protocol::IdentityKey::from_seed(&seed);
    write(path, &format!("{}\n", hex::encode(*key.to_seed())), true)?;
    Ok(key)
}

fn check_name(n: &str) -> Result<(), InitError> {
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(InitError::BadName(n.to_string()));
    }
    Ok(())
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    fingerprint: String,
}

fn leaf(issuer: &Issuer<'_, KeyPair>, common_name: &str, server: bool) -> Result<Leaf, InitError> {
    let mut params = if server {
        let mut p = CertificateParams::new(vec![COORDINATOR_NAME.to_string()])?;
        p.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        p.subject_alt_names.push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        p
    } else {
        CertificateParams::new(Vec::<String>::new())?
    };
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = if server {
        vec![ExtendedKeyUsagePurpose::ServerAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(Leaf {
        fingerprint: fingerprint(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A fresh CA, for tests that need certificates from outside the consortium.
pub fn foreign_client_certificate(
    common_name: &str,
) -> Result<(String, String, String), InitError> {
    let (ca_pem, issuer) = new_ca("foreign CA")?;
    let l = leaf(&issuer, common_name, false)?;
    Ok((ca_pem, l.cert_pem, l.key_pem))
}

fn ca_params(name: &str) -> Result<CertificateParams, InitError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn ca_name(consortium: &str) -> String {
    format!("{consortium} consortium CA")
}

fn new_ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>), InitError> {
    let params = ca_params(name)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// A client identity signed by the consortium CA in `root` but absent from its roster, for
/// tests and drills of refusal. Returns `(cert_pem, key_pem)`.
pub fn unlisted_certificate(root: &Path, common_name: &str) -> Result<(String, String), InitError> {
    let read = |p: PathBuf| {
        fs::read_to_string(&p)
            .map_err(|source| InitError::Write { path: p.display().to_string(), source })
    };
    let roster: RosterFile =
        toml::from_str(&read(root.join("roster.toml"))?).map_err(|e| InitError::Write {
            path: "roster.toml".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let key = KeyPair::from_pem(&read(root.join("ca.key"))?)?;
    let issuer = Issuer::new(ca_params(&ca_name(&roster.consortium))?, key);
    let l = leaf(&issuer, common_name, false)?;
    Ok((l.cert_pem, l.key_pem))
}

/// Creates the consortium in `dir` (which must not already hold one).
pub fn create(dir: &Path, spec: &ConsortiumSpec) -> Result<ConsortiumLayout, InitError> {
    if dir.join("roster.toml").exists() {
        return Err(InitError::Exists(dir.display().to_string()));
    }
    for n in spec.parties.iter().chain(spec.consumers.iter().map(|(n, _)| n)) {
        check_name(n)?;
    }
    let (ca_pem, issuer) = new_ca(&ca_name(&spec.name))?;
    write(&dir.join("ca.pem"), &ca_pem, false)?;
    write(&dir.join("ca.key"), &issuer.key().serialize_pem(), true)?;

    let coordinator = leaf(&issuer, "veil coordinator", true)?;
    let cdir = dir.join("coordinator");
    write(&cdir.join("cert.pem"), &coordinator.cert_pem, false)?;
    write(&cdir.join("key.pem"), &coordinator.key_pem, true)?;
    let coordinator_identity = new_key(&cdir.join("identity.key"))?;
    let coordinator_config = cdir.join("coordinator.toml");
    write(
        &coordinator_config,
        &format!(
            "# The coordinator. Paths are relative to this file.\n\
             listen = \"{addr}\"\n\
             database = \"coordinator.db\"\n\
             roster = \"../roster.toml\"\n\
             ca = \"../ca.pem\"\n\
             cert = \"cert.pem\"\n\
             key = \"key.pem\"\n\
             # Signs the coordinator's audit log; its public half is in the roster.\n\
             identity = \"identity.key\"\n\
             # A party silent for this long in a stage is a dropout.\n\
             stage_timeout_secs = 30\n\
             # How long parties have to accept or refuse a job.\n\
             offer_timeout_secs = 10\n",
            addr = spec.coordinator
        ),
        false,
    )?;

    let url = format!("https://{}", spec.coordinator);
    let mut roster = RosterFile {
        consortium: spec.name.clone(),
        coordinator_key: hex::encode(coordinator_identity.verifying_key().as_bytes()),
        parties: Vec::new(),
        consumers: Vec::new(),
    };
    let mut party_configs = Vec::new();
    for (id, name) in spec.parties.iter().enumerate() {
        let l = leaf(&issuer, &format!("veil party {name}"), false)?;
        let pdir = dir.join("parties").join(name);
        write(&pdir.join("cert.pem"), &l.cert_pem, false)?;
        write(&pdir.join("key.pem"), &l.key_pem, true)?;
        let identity = new_key(&pdir.join("identity.key"))?;
        let config = pdir.join("party.toml");
        write(
            &config,
            &format!(
                "# Party {name}. Paths are relative to this file.\n\
                 id = {id}\n\
                 name = \"{name}\"\n\
                 coordinator = \"{url}\"\n\
                 roster = \"../../roster.toml\"\n\
                 ca = \"../../ca.pem\"\n\
                 cert = \"cert.pem\"\n\
                 key = \"key.pem\"\n\
                 identity = \"identity.key\"\n\
                 # The fewest parties whose data this party's input may be combined with.\n\
                 min_cohort = 2\n\
                 \n\
                 # Datasets this party serves, for example:\n\
                 # [[datasets]]\n\
                 # name = \"flights\"\n\
                 # path = \"flights.csv\"\n\
                 # columns = {{ carrier = \"string\", dep_delay = \"float\", month = \"int\" }}\n"
            ),
            false,
        )?;
        party_configs.push(config);
        roster.parties.push(PartyEntry {
            id: id as u32,
            name: name.clone(),
            identity_key: hex::encode(identity.verifying_key().as_bytes()),
            certificate_sha256: l.fingerprint,
        });
    }
    let mut consumer_configs = Vec::new();
    for (name, admin) in &spec.consumers {
        let l = leaf(&issuer, &format!("veil consumer {name}"), false)?;
        let udir = dir.join("consumers").join(name);
        write(&udir.join("cert.pem"), &l.cert_pem, false)?;
        write(&udir.join("key.pem"), &l.key_pem, true)?;
        let signing = new_key(&udir.join("signing.key"))?;
        let config = udir.join("consumer.toml");
        write(
            &config,
            &format!(
                "# Consumer {name}. Paths are relative to this file.\n\
                 name = \"{name}\"\n\
                 coordinator = \"{url}\"\n\
                 ca = \"../../ca.pem\"\n\
                 cert = \"cert.pem\"\n\
                 key = \"key.pem\"\n\
                 # Signs every job it submits; parties check it against the roster.\n\
                 signing_key = \"signing.key\"\n"
            ),
            false,
        )?;
        consumer_configs.push(config);
        roster.consumers.push(ConsumerEntry {
            name: name.clone(),
            certificate_sha256: l.fingerprint,
            signing_key: hex::encode(signing.verifying_key().as_bytes()),
            admin: *admin,
            jobs_per_day: None,
            fetches_per_day: None,
        });
    }
    let roster_path = dir.join("roster.toml");
    write(
        &roster_path,
        &format!(
            "# The consortium roster: distribute it to every member. Parties trust the identity\n\
             # keys here, not anything the coordinator says.\n{}",
            roster.to_toml()
        ),
        false,
    )?;
    Ok(ConsortiumLayout {
        root: dir.to_path_buf(),
        roster: roster_path,
        coordinator_config,
        party_configs,
        consumer_configs,
    })
}
