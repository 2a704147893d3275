//! The consortium roster (`roster.toml`): who the parties and consumers are.
//!
//! Written once by `veil init` and distributed to every member out of band. Parties take the
//! identity keys from it (so the coordinator cannot substitute them); the coordinator maps a
//! caller's TLS certificate to a member through the fingerprints.

use std::path::Path;

use serde::{Deserialize, Serialize};
use veil_protocol::PartyId;

use crate::ConfigError;

/// The roster file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RosterFile {
    /// The consortium's name.
    pub consortium: String,
    /// Hex Ed25519 public key that signs the coordinator's audit log.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub coordinator_key: String,
    /// Data owners.
    #[serde(default)]
    pub parties: Vec<PartyEntry>,
    /// Job submitters.
    #[serde(default)]
    pub consumers: Vec<ConsumerEntry>,
}

/// One party.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PartyEntry {
    /// The party's id.
    pub id: u32,
    /// A readable name.
    pub name: String,
    /// Hex Ed25519 public key that signs its secure aggregation keys.
    pub identity_key: String,
    /// Hex SHA-256 of its TLS certificate (DER).
    pub certificate_sha256: String,
}

/// One consumer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerEntry {
    /// The consumer's name.
    pub name: String,
    /// Hex SHA-256 of its TLS certificate (DER).
    pub certificate_sha256: String,
    /// Hex Ed25519 public key that signs its jobs; parties take part only in jobs it signed.
    /// Empty for a consumer that submits no jobs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signing_key: String,
    /// Whether it may use the admin service.
    #[serde(default)]
    pub admin: bool,
    /// Most jobs it may submit in 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_per_day: Option<u32>,
    /// Most result fetches in 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetches_per_day: Option<u32>,
}

/// Who a certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    /// A party.
    Party(PartyId),
    /// A consumer, and whether it is an administrator.
    Consumer {
        /// Its name.
        name: String,
        /// Admin rights.
        admin: bool,
    },
}

impl RosterFile {
    /// Reads and checks a roster file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::read(path)?;
        let parse =
            |message: String| ConfigError::Parse { path: path.display().to_string(), message };
        let roster: RosterFile = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
        roster.check().map_err(parse)?;
        Ok(roster)
    }

    /// Checks what the types do not: keys parse, and no id, consumer name or consumer key is
    /// listed twice.
    pub fn check(&self) -> Result<(), String> {
        self.protocol_roster()?;
        for (i, c) in self.consumers.iter().enumerate() {
            let earlier = &self.consumers[..i];
            if earlier.iter().any(|e| e.name == c.name) {
                return Err(format!("consumer {} is listed twice", c.name));
            }
            if !c.signing_key.is_empty() && earlier.iter().any(|e| e.signing_key == c.signing_key) {
                return Err(format!(
                    "consumer {} shares its signing_key with another consumer; each signs its own jobs",
                    c.name
                ));
            }
            if !c.signing_key.is_empty() && parse_key(&c.signing_key).is_none() {
                return Err(format!(
                    "consumer {}: signing_key must be 64 hex digits of an Ed25519 public key",
                    c.name
                ));
            }
        }
        Ok(())
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("rosters always serialise")
    }

    /// The parties' identity keys, as the protocol uses them. Fails on a malformed key or a
    /// repeated id.
    pub fn protocol_roster(&self) -> Result<veil_protocol::Roster, String> {
        let mut roster = veil_protocol::Roster::new();
        for p in &self.parties {
            let bytes: [u8; 32] = hex::decode(&p.identity_key)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("party {}: identity_key must be 64 hex digits", p.id))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| {
                format!("party {}: identity_key is not an Ed25519 public key", p.id)
            })?;
            if roster.key(PartyId(p.id)).is_some() {
                return Err(format!("party id {} is listed twice", p.id));
            }
            roster.insert(PartyId(p.id), key);
        }
        Ok(roster)
    }

    /// The member holding the certificate with this fingerprint.
    pub fn member(&self, certificate_sha256: &str) -> Option<Member> {
        if let Some(p) = self.parties.iter().find(|p| p.certificate_sha256 == certificate_sha256) {
            return Some(Member::Party(PartyId(p.id)));
        }
        self.consumers
            .iter()
            .find(|c| c.certificate_sha256 == certificate_sha256)
            .map(|c| Member::Consumer { name: c.name.clone(), admin: c.admin })
    }

    /// A consumer's entry.
    pub fn consumer(&self, name: &str) -> Option<&ConsumerEntry> {
        self.consumers.iter().find(|c| c.name == name)
    }

    /// The key that verifies a consumer's jobs, if the roster lists one.
    pub fn consumer_key(&self, name: &str) -> Option<ed25519_dalek::VerifyingKey> {
        parse_key(&self.consumer(name)?.signing_key)
    }

    /// Every consumer's job-signing key, by name (consumers without one are left out).
    pub fn consumer_keys(&self) -> std::collections::BTreeMap<String, ed25519_dalek::VerifyingKey> {
        self.consumers
            .iter()
            .filter_map(|c| Some((c.name.clone(), parse_key(&c.signing_key)?)))
            .collect()
    }

    /// The key that verifies the coordinator's audit log, or the party's identity key for
    /// `party N` writers.
    pub fn audit_key(&self, writer: &str) -> Option<ed25519_dalek::VerifyingKey> {
        let hex_key = if writer == "coordinator" {
            self.coordinator_key.as_str()
        } else {
            let id: u32 = writer.strip_prefix("party ")?.parse().ok()?;
            self.party(PartyId(id))?.identity_key.as_str()
        };
        parse_key(hex_key)
    }

    /// A party's entry.
    pub fn party(&self, id: PartyId) -> Option<&PartyEntry> {
        self.parties.iter().find(|p| p.id == id.0)
    }
}

/// An Ed25519 public key from 64 hex digits.
fn parse_key(hex_key: &str) -> Option<ed25519_dalek::VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(name: &str, key: u8) -> ConsumerEntry {
        ConsumerEntry {
            name: name.into(),
            certificate_sha256: format!("{key:064x}"),
            signing_key: hex::encode(
                ed25519_dalek::SigningKey::from_bytes(&[key; 32]).verifying_key().as_bytes(),
            ),
            admin: false,
            jobs_per_day: None,
            fetches_per_day: None,
        }
    }

    #[test]
    fn a_consumer_is_listed_once_with_a_key_of_its_own() {
        let roster = |consumers| RosterFile {
            consortium: "c".into(),
            coordinator_key: String::new(),
            parties: Vec::new(),
            consumers,
        };
        assert_eq!(roster(vec![consumer("a", 1), consumer("b", 2)]).check(), Ok(()));
        let twice = roster(vec![consumer("a", 1), consumer("a", 2)]).check().unwrap_err();
        assert!(twice.contains("listed twice"), "{twice}");
        let shared = roster(vec![consumer("a", 1), consumer("b", 1)]).check().unwrap_err();
        assert!(shared.contains("shares its signing_key"), "{shared}");
        let mut bad = consumer("a", 1);
        bad.signing_key = "zz".into();
        let bad = roster(vec![bad]).check().unwrap_err();
        assert!(bad.contains("64 hex digits"), "{bad}");
    }
}
