//! Replays the fuzz targets' corpus (`fuzz/corpus/<target>/`) through the same harnesses, so
//! every input a fuzzer ever saved keeps being checked on stable by `cargo test`.

use std::path::{Path, PathBuf};

use veil_testkit::fuzz;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus directory entries are readable").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the {target} corpus is empty");
    files
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).expect("corpus files are readable")))
        .collect()
}

#[test]
fn decoder_corpora_replay() {
    for (_, bytes) in corpus("party_message") {
        fuzz::party_message(&bytes);
    }
    for (_, bytes) in corpus("coordinator_message") {
        fuzz::coordinator_message(&bytes);
    }
}

#[test]
fn party_round_corpus_replays_and_the_honest_seed_reaches_the_end() {
    for (path, bytes) in corpus("party_round") {
        let finished = fuzz::party_round(&bytes);
        if path.file_name().is_some_and(|n| n == "honest") {
            assert!(finished, "the recorded honest transcript must drive party 0 to the end");
        }
    }
}

#[test]
fn coordinator_round_corpus_replays_and_the_honest_seed_reaches_the_end() {
    for (path, bytes) in corpus("coordinator_round") {
        let included = fuzz::coordinator_round(&bytes);
        if path.file_name().is_some_and(|n| n == "honest") {
            assert!(included, "the recorded honest messages must put party 0 in the sum");
        }
    }
}

#[test]
fn chunks_round_trip() {
    let chunks = vec![vec![1, 2, 3], vec![], vec![9; 300]];
    assert_eq!(fuzz::split_chunks(&fuzz::join_chunks(&chunks)), chunks);
}
