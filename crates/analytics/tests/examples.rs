//! Every job specification under `examples/jobs/` parses.

#[test]
fn example_jobs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/jobs");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/jobs exists") {
        let path = entry.expect("readable entry").path();
        let name = path.file_name().expect("a file name").to_string_lossy().to_string();
        if name.ends_with(".toml") && !name.starts_with("party-") {
            let text = std::fs::read_to_string(&path).expect("readable example");
            veil_analytics::Job::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            parsed += 1;
        }
    }
    assert!(parsed >= 2, "only {parsed} examples");
}
