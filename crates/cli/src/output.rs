//! How the `veil` command ends: one `error: …` line for a failure, and a quiet exit when the
//! reader of its output goes away (`veil … | head -1`).
//!
//! Rust ignores SIGPIPE, so writing to a closed pipe fails with `BrokenPipe`: `println!` then
//! panics and `write!` returns the error. Restoring the default SIGPIPE disposition would need
//! `unsafe`, which this workspace forbids, so instead both are recognised and the command exits
//! with status 0 without a word, as ripgrep does: the reader stopped because it had what it
//! wanted.

use std::io::{ErrorKind, Write};

/// The start of the message a broken pipe gives, on Linux (glibc and musl), macOS and the BSDs.
const BROKEN_PIPE: &str = "Broken pipe";

/// Installs a panic hook that exits quietly with status 0 when a print to standard output or
/// standard error panicked because the pipe was closed; other panics are reported as before.
pub(crate) fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains(BROKEN_PIPE) {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Whether the error is, or was caused by, writing to a closed pipe.
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == ErrorKind::BrokenPipe;
        }
        if let Some(csv) = e.downcast_ref::<csv::Error>() {
            return matches!(csv.kind(), csv::ErrorKind::Io(io) if io.kind() == ErrorKind::BrokenPipe);
        }
        false
    })
}

/// Prints the error and its causes on one line, `error: outer: inner`, without a backtrace.
pub(crate) fn report(error: &anyhow::Error) {
    let _ = writeln!(std::io::stderr().lock(), "error: {}", veil_cli::consumer::one_line(error));
}

/// Whether log lines may be coloured: only on a terminal, and not when `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org/>).
pub(crate) fn colour_logs() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapping(std::io::Error);

    impl std::fmt::Display for Wrapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read a.toml: {}", self.0)
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_joined_once() {
        let io = || std::io::Error::new(ErrorKind::NotFound, "gone");
        let e = anyhow::Error::new(Wrapping(io())).context("loading");
        assert_eq!(veil_cli::consumer::one_line(&e), "loading: cannot read a.toml: gone");
        let e = anyhow::Error::new(io()).context("reading b").context("loading");
        assert_eq!(veil_cli::consumer::one_line(&e), format!("{e:#}"));
        let pipe = anyhow::Error::new(std::io::Error::from(ErrorKind::BrokenPipe)).context("x");
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&e));
    }
}
