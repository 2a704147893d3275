//! The party's configuration file (`party.toml`, written by `veil init`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use veil_analytics::{ColumnInfo, ColumnType, DatasetCatalog, DatasetSchema};
use veil_governance::scan::ColumnTag;
use veil_governance::{DatasetGovernance, Grade, Policy};
use veil_proto::ConfigError;
use veil_proto::roster::RosterFile;
use veil_proto::tls::{TlsFiles, TlsMaterial};
use veil_protocol::{IdentityKey, PartyId};
use zeroize::Zeroizing;

/// The file as written. Relative paths are relative to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyFile {
    /// This party's id in the roster.
    pub id: u32,
    /// A readable name.
    pub name: String,
    /// The coordinator's URL, `https://host:port`.
    pub coordinator: String,
    /// The consortium roster.
    pub roster: PathBuf,
    /// CA certificate.
    pub ca: PathBuf,
    /// This party's TLS certificate.
    pub cert: PathBuf,
    /// This party's TLS key.
    pub key: PathBuf,
    /// This party's Ed25519 identity seed (hex).
    pub identity: PathBuf,
    /// The fewest parties whose data this party's input may be combined with.
    #[serde(default = "default_min_cohort")]
    pub min_cohort: u32,
    /// The most parties this party assumes may collude with the coordinator (c). It joins only
    /// rounds whose thresholds and survivor quorum tolerate at least this many.
    #[serde(default = "default_max_corrupt")]
    pub max_corrupt: u32,
    /// The party's own records: budget ledger, audit log, receipts (SQLite).
    #[serde(default = "default_state")]
    pub state: PathBuf,
    /// The datasets served.
    #[serde(default)]
    pub datasets: Vec<DatasetConfig>,
    /// How trainer programs the owner approved run.
    #[serde(default)]
    pub trainers: TrainersConfig,
}

/// How this party runs the trainer programs its owner approved (by their hash, in each
/// dataset's policy): the interpreter, what it may read, and its limits. Each round a program
/// runs confined (no network, its own scratch directory, the paths below read-only); where this
/// system cannot confine it the party refuses such jobs unless `allow_unconfined` is set.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainersConfig {
    /// The interpreter that runs a program's source (its only argument).
    #[serde(default = "default_interpreter")]
    pub interpreter: PathBuf,
    /// Paths a program may read beyond the system's libraries: the interpreter's installation
    /// and its packages (a virtualenv, say).
    #[serde(default)]
    pub read_paths: Vec<PathBuf>,
    /// Run programs unconfined on a system with no sandbox. Off by default: such a program
    /// could reach the network and every file the party can.
    #[serde(default)]
    pub allow_unconfined: bool,
    /// Seconds one round of a program may run before it is killed.
    #[serde(default = "default_trainer_seconds")]
    pub timeout_seconds: u64,
    /// Memory (address space) a program may use, in MiB.
    #[serde(default = "default_trainer_memory")]
    pub memory_mib: u64,
}

impl Default for TrainersConfig {
    fn default() -> Self {
        Self {
            interpreter: default_interpreter(),
            read_paths: Vec::new(),
            allow_unconfined: false,
            timeout_seconds: default_trainer_seconds(),
            memory_mib: default_trainer_memory(),
        }
    }
}

fn default_interpreter() -> PathBuf {
    PathBuf::from("/usr/bin/python3")
}

fn default_trainer_seconds() -> u64 {
    600
}

fn default_trainer_memory() -> u64 {
    8192
}

fn default_state() -> PathBuf {
    PathBuf::from("party-state.db")
}

fn default_min_cohort() -> u32 {
    2
}

fn default_max_corrupt() -> u32 {
    veil_protocol::params::DEFAULT_MAX_CORRUPT as u32
}

/// One dataset: a CSV file with a header row, the types of the columns it exposes, its grade,
/// column tags and the owner's policy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// The name jobs use.
    pub name: String,
    /// The CSV file (when the data is not in PostgreSQL).
    #[serde(default)]
    pub path: PathBuf,
    /// A PostgreSQL table instead of a file.
    #[serde(default)]
    pub postgres: Option<PostgresSource>,
    /// Column name → type; other columns in the file are never read.
    pub columns: BTreeMap<String, ColumnType>,
    /// The dataset's grade (general, important, core).
    #[serde(default)]
    pub grade: Grade,
    /// Column tags (identifier, quasi-identifier, sensitive, general); untagged is general.
    #[serde(default)]
    pub tags: BTreeMap<String, ColumnTag>,
    /// The owner's policy.
    #[serde(default)]
    pub policy: Policy,
    /// Declared clipping bounds `[min, max]` of numeric columns, announced for SQL planning.
    #[serde(default)]
    pub bounds: BTreeMap<String, (f64, f64)>,
    /// Declared value domains of categorical columns, announced for SQL GROUP BY.
    #[serde(default)]
    pub domains: BTreeMap<String, Vec<String>>,
}

impl DatasetConfig {
    /// A CSV dataset with the given columns, the general grade, no tags, bounds or domains
    /// and the default policy.
    pub fn csv(
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        columns: BTreeMap<String, ColumnType>,
    ) -> Self {
        DatasetConfig {
            name: name.into(),
            path: path.into(),
            postgres: None,
            columns,
            grade: Grade::default(),
            tags: BTreeMap::new(),
            policy: Policy::default(),
            bounds: BTreeMap::new(),
            domains: BTreeMap::new(),
        }
    }

    /// The dataset's governance, for policy evaluation.
    pub fn governance(&self) -> DatasetGovernance {
        DatasetGovernance {
            dataset: self.name.clone(),
            grade: self.grade,
            tags: self.tags.clone(),
            policy: self.policy.clone(),
        }
    }

    /// What the party announces about the dataset: schema, bounds and domains, never data.
    pub fn catalog(&self) -> DatasetCatalog {
        DatasetCatalog {
            name: self.name.clone(),
            columns: self
                .columns
                .iter()
                .map(|(c, t)| ColumnInfo {
                    name: c.clone(),
                    ty: *t,
                    bounds: self.bounds.get(c).copied(),
                    domain: self.domains.get(c).cloned(),
                })
                .collect(),
        }
    }

    /// The schema jobs are checked against.
    pub fn schema(&self) -> DatasetSchema {
        DatasetSchema {
            name: self.name.clone(),
            columns: self.columns.iter().map(|(c, t)| (c.clone(), *t)).collect(),
        }
    }
}

/// A PostgreSQL table a party serves. The party connects read-only; the password comes from
/// the environment, never from the file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// libpq-style `key=value` connection settings without the password, e.g.
    /// `host=127.0.0.1 port=5432 user=reader dbname=warehouse`.
    pub connection: String,
    /// The table (or `schema.table`).
    pub table: String,
    /// The environment variable holding the password, if one is needed.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// A loaded, checked configuration.
#[derive(Clone)]
pub struct PartyConfig {
    /// This party.
    pub id: PartyId,
    /// Its name.
    pub name: String,
    /// The coordinator's URL.
    pub coordinator: String,
    /// The roster's identity keys.
    pub roster: Arc<veil_protocol::Roster>,
    /// TLS material, `None` only for dangerous plain text.
    pub tls: Option<TlsMaterial>,
    /// The identity key's seed.
    pub identity_seed: Zeroizing<[u8; 32]>,
    /// Minimum cohort.
    pub min_cohort: usize,
    /// The collusion bound `c` a round must tolerate.
    pub max_corrupt: usize,
    /// The key that signs the coordinator's audit log (from the roster), which signs the heads
    /// the coordinator sends with its offers.
    pub coordinator_key: Option<ed25519_dalek::VerifyingKey>,
    /// The keys that sign consumers' jobs, by consumer name (from the roster). The party takes
    /// part only in jobs signed by the consumer the offer names.
    pub consumer_keys: std::collections::BTreeMap<String, ed25519_dalek::VerifyingKey>,
    /// The roster's parties' names, by id: what an owner's policy names a party by.
    pub party_names: std::collections::BTreeMap<u32, String>,
    /// Datasets served.
    pub datasets: Vec<DatasetConfig>,
    /// The party's store.
    pub state: PathBuf,
    /// How trainer programs run.
    pub trainers: TrainersConfig,
}

impl std::fmt::Debug for PartyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartyConfig")
            .field("id", &self.id)
            .field("coordinator", &self.coordinator)
            .field("identity", &"[redacted]")
            .finish()
    }
}

fn parse_error(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Parse { path: path.display().to_string(), message: message.into() }
}

/// Checks that `s` is a date of the Gregorian calendar written `YYYY-MM-DD`; the error completes
/// a sentence about the value ("expires \"2027-13-45\" …").
fn calendar_date(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    let format = || "must be written YYYY-MM-DD".to_string();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(format());
    }
    let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return Err(format());
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err("is not a date: the month must be 01 to 12".to_string()),
    };
    if day == 0 || day > days {
        return Err(format!("is not a date: the day must be 01 to {days} in {year:04}-{month:02}"));
    }
    Ok(())
}

impl PartyFile {
    /// Reads the file and resolves its paths (dataset paths too).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut f: PartyFile =
            toml::from_str(&text).map_err(|e| parse_error(path, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [&mut f.roster, &mut f.ca, &mut f.cert, &mut f.key, &mut f.identity, &mut f.state]
        {
            resolve(p);
        }
        for d in &mut f.datasets {
            if !d.path.as_os_str().is_empty() {
                resolve(&mut d.path);
            }
        }
        resolve(&mut f.trainers.interpreter);
        f.trainers.read_paths.iter_mut().for_each(resolve);
        // A trainer program reads beneath these: none of the party's secrets or data may lie
        // there.
        let readable: Vec<PathBuf> = veil_sandbox::SYSTEM_READ_ONLY
            .iter()
            .map(PathBuf::from)
            .chain(f.trainers.read_paths.iter().cloned())
            .collect();
        let own = [&f.state, &f.key, &f.identity]
            .into_iter()
            .chain(f.datasets.iter().map(|d| &d.path).filter(|p| !p.as_os_str().is_empty()));
        for p in own {
            if let Some(r) = readable.iter().find(|r| p.starts_with(r)) {
                return Err(parse_error(
                    path,
                    format!(
                        "{} lies beneath {}, which trainer programs may read: move it, or take that path out of [trainers] read_paths",
                        p.display(),
                        r.display()
                    ),
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for d in &f.datasets {
            if !names.insert(d.name.as_str()) {
                return Err(parse_error(path, format!("dataset {:?} is declared twice", d.name)));
            }
            if d.columns.is_empty() {
                return Err(parse_error(path, format!("dataset {:?} declares no columns", d.name)));
            }
            match (&d.postgres, d.path.as_os_str().is_empty()) {
                (Some(_), false) | (None, true) => {
                    return Err(parse_error(
                        path,
                        format!(
                            "dataset {:?} needs exactly one source: a `path` or a `postgres` table",
                            d.name
                        ),
                    ));
                }
                (Some(pg), true) => {
                    let valid = |s: &str| {
                        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    };
                    if !pg.table.split('.').all(valid) || pg.table.split('.').count() > 2 {
                        return Err(parse_error(
                            path,
                            format!(
                                "dataset {:?}: table {:?} must be name or schema.name",
                                d.name, pg.table
                            ),
                        ));
                    }
                    if pg.connection.contains("password") {
                        return Err(parse_error(
                            path,
                            format!(
                                "dataset {:?}: put the password in the environment (password_env), not the file",
                                d.name
                            ),
                        ));
                    }
                    if let Some(c) = d.columns.keys().find(|c| !valid(c)) {
                        return Err(parse_error(
                            path,
                            format!(
                                "dataset {:?}: column {c:?} must be a plain identifier for PostgreSQL",
                                d.name
                            ),
                        ));
                    }
                }
                (None, false) => {}
            }
            if let Some(c) =
                d.bounds.keys().chain(d.domains.keys()).find(|c| !d.columns.contains_key(*c))
            {
                return Err(parse_error(
                    path,
                    format!(
                        "dataset {:?} declares bounds or a domain for column {c:?}, which it does not declare",
                        d.name
                    ),
                ));
            }
            if let Some((c, (lo, hi))) =
                d.bounds.iter().find(|(_, (lo, hi))| !(lo.is_finite() && hi.is_finite() && lo < hi))
            {
                return Err(parse_error(
                    path,
                    format!(
                        "dataset {:?}: bounds of {c:?} must be finite with min < max, got [{lo}, {hi}]",
                        d.name
                    ),
                ));
            }
            if let Some(c) = d.tags.keys().find(|c| !d.columns.contains_key(*c)) {
                return Err(parse_error(
                    path,
                    format!("dataset {:?} tags column {c:?}, which it does not declare", d.name),
                ));
            }
            let p = &d.policy;
            let bad_number = [p.max_rho_per_release, p.budget_per_consumer, p.budget_total]
                .into_iter()
                .flatten()
                .any(|x| !x.is_finite() || x < 0.0);
            if bad_number {
                return Err(parse_error(
                    path,
                    format!(
                        "dataset {:?}: budgets and ρ limits must be non-negative numbers",
                        d.name
                    ),
                ));
            }
            if let Some(e) = &p.expires {
                if let Err(why) = calendar_date(e) {
                    return Err(parse_error(
                        path,
                        format!("dataset {:?}: expires {e:?} {why}", d.name),
                    ));
                }
            }
        }
        if f.min_cohort == 0 {
            return Err(parse_error(
                path,
                "min_cohort must be at least 1 (1 lets this party release its own data alone)",
            ));
        }
        Ok(f)
    }

    /// Loads the roster, identity and TLS material, and checks that the identity key is the
    /// one the roster lists for this party.
    pub fn into_config(self, plaintext: bool) -> Result<PartyConfig, ConfigError> {
        let roster_file = RosterFile::load(&self.roster)?;
        let roster = roster_file.protocol_roster().map_err(|m| parse_error(&self.roster, m))?;
        let text = Zeroizing::new(std::fs::read_to_string(&self.identity).map_err(|source| {
            ConfigError::Read { path: self.identity.display().to_string(), source }
        })?);
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), seed.as_mut())
            .map_err(|_| parse_error(&self.identity, "the identity key must be 64 hex digits"))?;
        let id = PartyId(self.id);
        let public = IdentityKey::from_seed(&seed).verifying_key();
        match roster.key(id) {
            Some(k) if *k == public => {}
            Some(_) => {
                return Err(parse_error(
                    &self.identity,
                    format!("this identity key is not the one the roster lists for {id}"),
                ));
            }
            None => return Err(parse_error(&self.roster, format!("{id} is not in the roster"))),
        }
        let tls = if plaintext {
            None
        } else {
            Some(TlsMaterial::load(&TlsFiles { ca: self.ca, cert: self.cert, key: self.key })?)
        };
        Ok(PartyConfig {
            id,
            name: self.name,
            coordinator: self.coordinator,
            roster: Arc::new(roster),
            tls,
            identity_seed: seed,
            min_cohort: self.min_cohort as usize,
            max_corrupt: self.max_corrupt as usize,
            coordinator_key: roster_file.audit_key("coordinator"),
            consumer_keys: roster_file.consumer_keys(),
            party_names: roster_file.parties.iter().map(|p| (p.id, p.name.clone())).collect(),
            datasets: self.datasets,
            state: self.state,
            trainers: self.trainers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The annotated governance example of docs/GOVERNANCE.md parses, with every field.
    #[test]
    fn the_governance_example_parses() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/jobs/party-governance.toml"),
        )
        .unwrap();
        let text = format!(
            "id = 1\nname = \"jfk\"\ncoordinator = \"https://127.0.0.1:7443\"\nroster = \"r\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\nidentity = \"i\"\n{example}"
        );
        let f: PartyFile = toml::from_str(&text).unwrap();
        let d = &f.datasets[0];
        assert_eq!(d.grade, Grade::General);
        assert_eq!(d.tags["tailnum"], ColumnTag::Identifier);
        let p = &d.policy;
        assert_eq!(p.purposes, vec!["research", "operations"]);
        assert_eq!((p.min_cohort, p.k_threshold, p.require_dp), (Some(3), Some(10), true));
        assert_eq!(
            (p.max_rho_per_release, p.budget_per_consumer, p.budget_total),
            (Some(0.5), Some(2.0), Some(5.0))
        );
        assert_eq!((p.expires.as_deref(), p.max_uses), (Some("2027-12-31"), Some(1000)));
        let typo = text.replace("k_threshold", "k_treshold");
        assert!(toml::from_str::<PartyFile>(&typo).is_err(), "a misspelt policy field is refused");
    }

    /// `expires` must be a day of the calendar: a month past 12, a day past the end of its
    /// month (leap years counted) or a wrongly written date is refused, naming the dataset and
    /// the value.
    #[test]
    fn impossible_expiry_dates_are_refused_naming_dataset_and_value() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/jobs/party-governance.toml"),
        )
        .unwrap();
        let text = format!(
            "id = 1\nname = \"jfk\"\ncoordinator = \"https://127.0.0.1:7443\"\nroster = \"r\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\nidentity = \"i\"\n{example}"
        );
        assert!(text.contains("expires = \"2027-12-31\""));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let load = |expires: &str| {
            std::fs::write(&path, text.replace("2027-12-31", expires)).unwrap();
            PartyFile::load(&path)
        };
        for good in ["2027-12-31", "2028-02-29", "2000-02-29", "2027-04-30", "2027-01-31"] {
            assert!(load(good).is_ok(), "{good} is a date");
        }
        for (bad, why) in [
            ("2027-13-45", "the month must be 01 to 12"),
            ("2027-00-10", "the month must be 01 to 12"),
            ("2027-02-29", "the day must be 01 to 28 in 2027-02"),
            ("1900-02-29", "the day must be 01 to 28 in 1900-02"),
            ("2027-04-31", "the day must be 01 to 30 in 2027-04"),
            ("2027-01-00", "the day must be 01 to 31 in 2027-01"),
            ("2027-1-05", "must be written YYYY-MM-DD"),
            ("2027-é-001", "must be written YYYY-MM-DD"),
            ("2027/12/31", "must be written YYYY-MM-DD"),
        ] {
            let e = load(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("dataset \"flights\": expires \"{bad}\"")) && e.ends_with(why),
                "{bad}: {e}"
            );
        }
    }

    /// Nothing of the party's (its store, keys, datasets) may lie where trainer programs read.
    #[test]
    fn the_party_keeps_its_files_out_of_trainers_read_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        let text = |read: &str| {
            format!(
                "id = 1\nname = \"a\"\ncoordinator = \"https://127.0.0.1:7443\"\nroster = \"r\"\nca = \"c\"\ncert = \"c\"\nkey = \"secrets/k\"\nidentity = \"i\"\n\
                 [trainers]\nread_paths = [{read:?}]\n"
            )
        };
        std::fs::write(&path, text("venv")).unwrap();
        PartyFile::load(&path).unwrap();
        std::fs::write(&path, text("secrets")).unwrap();
        let e = PartyFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("trainer programs may read") && e.contains("secrets"), "{e}");
        std::fs::write(&path, text(".")).unwrap();
        assert!(PartyFile::load(&path).is_err(), "the whole directory, store included");
    }

    /// The dataset section shown in `examples/jobs/party-flights.toml` parses as part of a
    /// party file.
    #[test]
    fn the_example_dataset_section_parses() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/jobs/party-flights.toml"),
        )
        .unwrap();
        let text = format!(
            "id = 0\nname = \"ewr\"\ncoordinator = \"https://127.0.0.1:7443\"\nroster = \"r\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\nidentity = \"i\"\n{example}"
        );
        let f: PartyFile = toml::from_str(&text).unwrap();
        assert_eq!(f.datasets[0].columns.len(), 5);
        assert_eq!(f.datasets[0].columns["carrier"], ColumnType::String);
        let bad = text
            .replace("min_cohort", "x")
            .replace("name = \"flights\"", "name = \"flights\"\nbogus = 1");
        assert!(toml::from_str::<PartyFile>(&bad).is_err(), "unknown fields are refused");
    }
}
