//! A confined program cannot reach the network, read a file outside the paths it was given or
//! write outside its scratch directory; each attempt also runs unconfined, where it succeeds,
//! so the checks can fail.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use veil_sandbox::{Confinement, Error, Limits, SYSTEM_READ_ONLY, Sandbox};

const PROBE: &str = env!("CARGO_BIN_EXE_veil-sandbox-probe");

fn sandbox(scratch: &Path, what: &str, target: &str) -> Sandbox {
    let probe = PathBuf::from(PROBE);
    let mut read_only: Vec<PathBuf> = SYSTEM_READ_ONLY.iter().map(PathBuf::from).collect();
    read_only.push(probe.parent().unwrap().to_path_buf());
    Sandbox {
        program: probe,
        args: vec![what.into(), target.into()],
        read_only,
        scratch: scratch.to_path_buf(),
        env: Vec::new(),
        limits: Limits { wall: Duration::from_secs(20), ..Limits::default() },
    }
}

/// Runs the probe confined and unconfined; returns whether each attempt succeeded.
fn attempt(scratch: &Path, what: &str, target: &str) -> (bool, bool) {
    let s = sandbox(scratch, what, target);
    let confined = s.run(b"", Confinement::Sandboxed).unwrap();
    let free = s.run(b"", Confinement::None).unwrap();
    let said = |o: &veil_sandbox::Output| String::from_utf8_lossy(&o.stdout).trim().to_string();
    eprintln!("{what} {target}: confined {:?}, unconfined {:?}", said(&confined), said(&free));
    (confined.status.success(), free.status.success())
}

fn supported() -> bool {
    match veil_sandbox::support() {
        Ok(abi) => {
            eprintln!("Landlock ABI {abi}");
            true
        }
        Err(why) => {
            // The party refuses trainer jobs on such a system (unless its owner allowed
            // unconfined ones); nothing here to check.
            eprintln!("{why}");
            false
        }
    }
}

#[test]
fn a_confined_program_reads_and_writes_its_scratch_directory_only() {
    if !supported() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("other_dataset.csv");
    std::fs::write(&secret, "id,balance\n1,1000\n").unwrap();
    let inside = scratch.path().join("rows.csv");
    std::fs::write(&inside, "x\n1\n").unwrap();

    assert_eq!(attempt(scratch.path(), "read", inside.to_str().unwrap()), (true, true));
    assert_eq!(attempt(scratch.path(), "read", secret.to_str().unwrap()), (false, true));
    let out = scratch.path().join("update.bin");
    assert_eq!(attempt(scratch.path(), "write", out.to_str().unwrap()), (true, true));
    let outside = elsewhere.path().join("leak.txt");
    let (confined, _) = attempt(scratch.path(), "write", outside.to_str().unwrap());
    assert!(!confined);
    // The unconfined run wrote it; the confined one did not.
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "escaped");
    std::fs::remove_file(&outside).unwrap();
    let s = sandbox(scratch.path(), "write", outside.to_str().unwrap());
    assert!(!s.run(b"", Confinement::Sandboxed).unwrap().status.success());
    assert!(!outside.exists());
    // Configuration and process information are not readable either.
    assert!(!attempt(scratch.path(), "read", "/proc/self/environ").0);
}

#[test]
fn a_confined_program_reaches_no_network() {
    if !supported() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    });
    let (confined, free) = attempt(scratch.path(), "connect", &addr);
    assert!(!confined, "a confined program connected to {addr}");
    assert!(free, "the unconfined control could not connect");
    assert_eq!(accepted.join().unwrap(), "escaped");

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let target = udp.local_addr().unwrap().to_string();
    let s = sandbox(scratch.path(), "send", &target);
    let _ = s.run(b"", Confinement::Sandboxed).unwrap();
    let mut buf = [0u8; 16];
    assert!(udp.recv_from(&mut buf).is_err(), "a datagram from the sandbox arrived");
    s.run(b"", Confinement::None).unwrap();
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"escaped");
}

#[test]
fn limits_stop_a_program_that_runs_too_long_or_says_too_much() {
    let scratch = tempfile::tempdir().unwrap();
    let mut s = sandbox(scratch.path(), "read", "/dev/urandom");
    s.program = PathBuf::from("/bin/sh");
    s.args = vec!["-c".into(), "sleep 30".into()];
    s.limits.wall = Duration::from_millis(300);
    let started = std::time::Instant::now();
    assert!(matches!(s.run(b"", Confinement::None), Err(Error::TimedOut(_))));
    assert!(started.elapsed() < Duration::from_secs(10));
    s.args = vec!["-c".into(), "while :; do echo aaaaaaaaaaaaaaaa; done".into()];
    s.limits.wall = Duration::from_secs(20);
    s.limits.output_bytes = 1000;
    assert!(matches!(s.run(b"", Confinement::None), Err(Error::OutputTooLarge(1000))));
    // Standard input in, standard output out.
    s.args = vec!["-c".into(), "cat".into()];
    let out = s.run(b"parameters", Confinement::None).unwrap();
    assert_eq!(out.stdout, b"parameters");
}
