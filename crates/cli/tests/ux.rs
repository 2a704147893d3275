//! How the `veil` binary behaves at its edges: a failure is one `error: …` line and status 1
//! without a backtrace; a reader that closes the output pipe early ends the command quietly
//! (status 0, no panic); logs written to a non-terminal carry no colour codes.

// Helpers here set up files and processes; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const VEIL: &str = env!("CARGO_BIN_EXE_veil");

/// Every run here is over in well under this.
const TIMEOUT: Duration = Duration::from_secs(20);

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/breast_cancer").join(name)
}

/// `veil` with a clean environment for what is checked here: backtraces requested, colour not
/// refused, run in `dir`.
fn veil(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(VEIL);
    c.args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("VEIL_CONSUMER")
        .stdin(Stdio::null());
    c
}

/// Runs the command to its end, killing it after [`TIMEOUT`]; stdout and stderr are captured
/// unless the command already set stdout.
fn run(mut command: Command, capture_stdout: bool) -> Output {
    if capture_stdout {
        command.stdout(Stdio::piped());
    }
    let mut child = command.stderr(Stdio::piped()).spawn().expect("veil starts");
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = child.stdout.take().map(|s| reader(Box::new(s)));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("veil did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.map(|t| t.join().unwrap()).unwrap_or_default(),
        stderr: stderr.join().unwrap(),
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exactly one line, `error: …`, status 1, and nothing of a backtrace or of anyhow's default
/// `Error:` report.
fn assert_one_error_line(out: &Output, containing: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "status {:?}, stderr {err:?}", out.status);
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    assert!(err.ends_with('\n'), "{err:?}");
    assert!(err.contains(containing), "{containing:?} not in {err:?}");
    for unwanted in ["Error:", "backtrace", "Backtrace", "Caused by", "panicked"] {
        assert!(!err.contains(unwanted), "{unwanted:?} in {err:?}");
    }
}

#[test]
fn user_error_is_one_error_line_with_status_1_and_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let submit =
        run(veil(d, &["submit", "nonexistent.toml", "--config", "nonexistent.toml"]), true);
    assert_one_error_line(&submit, "nonexistent.toml");

    let result = run(veil(d, &["result", "x", "--config", "missing.toml"]), true);
    assert_one_error_line(&result, "missing.toml");
    // The file error's own message already names its cause; it is not repeated.
    assert_eq!(stderr(&result).matches("os error").count(), 1, "{}", stderr(&result));

    // A failure with a cause: the chain is joined with ": " on the same line.
    let predict = run(veil(d, &["predict", "--model", "missing-model.json", "rows.csv"]), true);
    assert_one_error_line(&predict, "reading missing-model.json: ");

    // Clap's usage errors stay clap's: its own message, status 2.
    let usage = run(veil(d, &["submit"]), true);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    assert!(stderr(&usage).contains("Usage:"), "{}", stderr(&usage));
    assert!(!stderr(&usage).contains("panicked"), "{}", stderr(&usage));
}

/// The write end of a pipe whose read end is already closed: every write to it fails with
/// `BrokenPipe`, the way `veil … | head -1` ends once `head` has its line. Deterministic,
/// unlike racing a real reader.
#[cfg(unix)]
fn closed_pipe() -> Stdio {
    let mut reader = Command::new("true").stdin(Stdio::piped()).spawn().expect("true runs");
    let write_end = reader.stdin.take().unwrap();
    // `true` exits without reading; with it the pipe's only read end is gone.
    reader.wait().unwrap();
    Stdio::from(write_end)
}

/// Broken pipe decision: the command stops at once and exits with status 0 without a word,
/// as ripgrep does (restoring SIGPIPE's default would take `unsafe`, which the workspace
/// forbids). Both ways of printing are covered: `println!` (`init`, `catalog scan`) and
/// returned write errors (`predict`).
#[cfg(unix)]
#[test]
fn closed_output_pipe_is_a_quiet_exit_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("model.json");
    std::fs::write(&model, model_json()).unwrap();
    let hospital_a = data("hospital_a.csv");
    let cases: [Vec<&str>; 3] = [
        vec!["init", "consortium"],
        vec!["catalog", "scan", hospital_a.to_str().unwrap()],
        vec!["predict", "--model", model.to_str().unwrap(), hospital_a.to_str().unwrap()],
    ];
    for args in cases {
        let mut command = veil(d, &args);
        command.stdout(closed_pipe());
        let out = run(command, false);
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err:?}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err:?}");
        assert!(err.is_empty(), "{args:?}: {err:?}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {:?} {err:?}", out.status);
    }

    // And through a shell, as a user would type it.
    let out = run(
        {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(r#""$0" init "$1" | head -1"#)
                .arg(VEIL)
                .arg(d.join("piped"))
                .current_dir(d)
                .env("RUST_BACKTRACE", "1");
            c
        },
        true,
    );
    assert!(out.status.success(), "{:?} {}", out.status, stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("created consortium in "));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

/// A linear regression model file on `mean_radius`, built by hand (no training needed).
fn model_json() -> String {
    use veil_learning::export::{ModelFile, Provenance};
    use veil_learning::model::{Model, ModelSpec};
    let model = Model::from_parameters(ModelSpec::LinearRegression, 1, vec![0.5, 1.0]).unwrap();
    ModelFile::new(&model, vec!["mean_radius".into()], "target".into(), None, Provenance::default())
        .unwrap()
        .to_json()
}

/// `veil coordinator --dangerous-plaintext` logs a warning, then fails because its port is
/// taken (held here): a fast, deterministic run that writes a log line and an error to a
/// pipe, with colour not refused by `NO_COLOR`.
#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let init = run(veil(d, &["init", "c", "--parties", "p", "--listen", &listen]), true);
    assert!(init.status.success(), "{}", stderr(&init));

    let config = d.join("c/coordinator/coordinator.toml");
    let mut command =
        veil(d, &["coordinator", "--config", config.to_str().unwrap(), "--dangerous-plaintext"]);
    command.env("RUST_LOG", "info");
    let out = run(command, true);
    let err = stderr(&out);
    assert!(err.contains("WARN"), "no log line: {err:?}");
    assert!(err.contains("serving WITHOUT TLS"), "{err:?}");
    assert!(!err.contains('\x1b'), "colour codes in {err:?}");
    // The failure itself is still the one `error:` line, last.
    assert_eq!(out.status.code(), Some(1), "{err:?}");
    let last = err.lines().last().unwrap();
    assert!(last.starts_with(&format!("error: cannot listen on {listen}: ")), "{err:?}");
    drop(taken);
}
