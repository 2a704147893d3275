//! Writes the seed corpus of the fuzz targets under `fuzz/corpus/`, from an honest round of the
//! harness configuration plus truncated and altered variants.
//!
//! `cargo run -p veil-testkit --example fuzz_corpus` (run from the repository root).

use std::path::Path;

use veil_testkit::fuzz::{honest_transcript, join_chunks};

fn write(target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> std::io::Result<()> {
    let (to_party, from_party) = honest_transcript();
    for (i, m) in to_party.iter().enumerate() {
        write("coordinator_message", &format!("honest-{i}"), m)?;
        write("coordinator_message", &format!("truncated-{i}"), &m[..m.len() / 2])?;
    }
    for (i, m) in from_party.iter().enumerate() {
        write("party_message", &format!("honest-{i}"), m)?;
        write("party_message", &format!("truncated-{i}"), &m[..m.len() / 2])?;
    }
    write("party_round", "honest", &join_chunks(&to_party))?;
    write("coordinator_round", "honest", &join_chunks(&from_party))?;
    // Each stage's message altered in its last bytes (a signature, ciphertext or vector).
    for i in 0..to_party.len() {
        let mut c = to_party.clone();
        let n = c[i].len();
        c[i][n - 3] ^= 0x11;
        write("party_round", &format!("altered-{i}"), &join_chunks(&c))?;
    }
    for i in 0..from_party.len() {
        let mut c = from_party.clone();
        let n = c[i].len();
        c[i][n - 3] ^= 0x11;
        write("coordinator_round", &format!("altered-{i}"), &join_chunks(&c))?;
    }
    Ok(())
}
