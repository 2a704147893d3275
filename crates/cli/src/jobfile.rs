//! Job files as clients read them.

use std::path::Path;

use anyhow::{Context, Result};

/// A training job naming its trainer program's file (`[trainer] program = "…"`, relative to
/// the job's file) with the program's source in its place, as JSON; any other job as it is.
/// Prints the program's SHA-256, by which the data owners approve it.
pub fn inline_trainer(text: &str, spec_path: &Path) -> Result<String> {
    let mut value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).with_context(|| format!("{}", spec_path.display()))?
    } else {
        let table: toml::Table =
            toml::from_str(text).with_context(|| format!("{}", spec_path.display()))?;
        serde_json::to_value(table)?
    };
    let Some(trainer) = value.get_mut("trainer").and_then(|t| t.as_object_mut()) else {
        return Ok(text.to_string());
    };
    let Some(program) = trainer.remove("program") else {
        return Ok(text.to_string());
    };
    let program = program
        .as_str()
        .with_context(|| format!("{}: trainer.program must be a file name", spec_path.display()))?;
    let path = spec_path.parent().unwrap_or(Path::new(".")).join(program);
    let source = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the trainer program {}", path.display()))?;
    eprintln!(
        "trainer program {}: sha256 {} (each data owner approves it by this hash in its policy's trainers)",
        path.display(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(source.as_bytes()))
    );
    trainer.insert("source".into(), serde_json::Value::String(source));
    Ok(value.to_string())
}

/// A job file's text, ready to plan: its trainer program (if it names one) inlined.
pub fn read(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    inline_trainer(&text, path)
}
