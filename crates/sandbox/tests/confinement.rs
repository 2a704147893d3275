//! A confined program cannot reach the network, read a file outside the paths it was given or
//! write outside its scratch directory; each attempt also runs unconfined, where it succeeds,
//! so the checks can fail. Then what else a confined program must not be able to do (Unix
//! sockets, capabilities, file modes, processes that outlive it): each test states it,
//! attempts it, and fails if the attempt succeeds.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use veil_sandbox::{Confinement, Error, Limits, SYSTEM_READ_ONLY, Sandbox};

const PROBE: &str = env!("CARGO_BIN_EXE_veil-sandbox-probe");
const PYTHON: &str = "/usr/bin/python3";

/// The probe, trying `what` on `target`, allowed to read its own directory too.
fn sandbox(scratch: &Path, what: &str, target: &str) -> Sandbox {
    let probe = PathBuf::from(PROBE);
    let mut s = shell(scratch, "");
    s.read_only.push(probe.parent().unwrap().to_path_buf());
    Sandbox { program: probe, args: vec![what.into(), target.into()], ..s }
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

/// A shell script, allowed to read the system's libraries only.
fn shell(scratch: &Path, script: &str) -> Sandbox {
    Sandbox {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".into(), script.into()],
        read_only: SYSTEM_READ_ONLY.iter().map(PathBuf::from).collect(),
        scratch: scratch.to_path_buf(),
        env: Vec::new(),
        limits: Limits { wall: Duration::from_secs(20), ..Limits::default() },
    }
}

/// A Python program (its source written to the scratch directory as `trainer.py`, as the
/// party does), or `None` where the system has no Python.
fn python(scratch: &Path, source: &str, args: &[String]) -> Option<Sandbox> {
    if !Path::new(PYTHON).exists() {
        eprintln!("no {PYTHON}: skipped");
        return None;
    }
    std::fs::write(scratch.join("trainer.py"), source).unwrap();
    let mut a = vec!["trainer.py".to_string()];
    a.extend_from_slice(args);
    Some(Sandbox { program: PathBuf::from(PYTHON), args: a, ..shell(scratch, "") })
}

fn is_running(pid: u32) -> bool {
    // A zombie has been reaped by nobody yet but runs no more.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')),
        Err(_) => false,
    }
}

fn kill(pid: u32) {
    // Only the process this test's program started, by its id.
    let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
}

/// THREAT_MODEL §16: "it cannot open a connection". Landlock does not mediate connecting to a
/// named Unix socket, and the network namespace does not isolate the file system, so a
/// confined program reaches any Unix socket whose path it can name (`/dev/log`,
/// `/run/systemd/journal/socket`, `/var/run/docker.sock`, a local proxy, a concurrent job's
/// program binding one in its own scratch directory).
#[test]
fn a_confined_program_cannot_connect_to_a_unix_socket_outside_its_scratch() {
    if !supported() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let path = elsewhere.path().join("collector.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let source = "import socket, sys\n\
                  s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
                  s.connect(sys.argv[1])\n\
                  s.sendall(open('rows.csv', 'rb').read())\n\
                  s.close()\n\
                  print('{\"update\": [0]}')\n";
    std::fs::write(scratch.path().join("rows.csv"), "x,y\n4.2,1\n").unwrap();
    let Some(s) = python(scratch.path(), source, &[path.display().to_string()]) else { return };
    let out = s.run(b"", Confinement::Sandboxed).unwrap();
    eprintln!(
        "program: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr_tail).lines().last().unwrap_or("")
    );
    let mut got = String::new();
    if let Ok((mut conn, _)) = listener.accept() {
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = conn.read_to_string(&mut got);
    }
    assert!(
        got.is_empty(),
        "a confined program sent its rows over a Unix socket outside its scratch: {got:?}"
    );
}

/// Held (a guard, passes): a program running as root keeps its capabilities, but joining the
/// party's network namespace through a pidfd of its parent (`pidfd_open` + `setns`) is refused
/// by Landlock's ptrace check, and without that the namespace has no interface.
#[test]
fn a_confined_program_cannot_return_to_the_partys_network_namespace() {
    if !supported() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let port = udp.local_addr().unwrap().port();
    let source = "import ctypes, os, socket, sys\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  fd = libc.syscall(434, os.getppid(), 0)  # pidfd_open\n\
                  r = libc.setns(fd, 0x40000000)  # CLONE_NEWNET\n\
                  print('pidfd', fd, 'setns', r, 'errno', ctypes.get_errno(), file=sys.stderr)\n\
                  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  s.sendto(b'escaped', ('127.0.0.1', int(sys.argv[1])))\n";
    let Some(s) = python(scratch.path(), source, &[port.to_string()]) else { return };
    let out = s.run(b"", Confinement::Sandboxed).unwrap();
    eprintln!("program: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr_tail));
    let mut buf = [0u8; 16];
    let got = udp.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
    assert!(got.is_err(), "a confined program sent a datagram into the party's network: {got:?}");
}

/// A party running as root (the default in a container) confines its program with Landlock
/// and a network namespace only: `unshare(CLONE_NEWNET)` succeeds for root, so no user
/// namespace is entered and the program keeps root's capabilities over the host, which
/// Landlock does not mediate: it creates a block device node for the disk holding the
/// party's files in its scratch directory (where every Landlock right, `MAKE_BLOCK` included,
/// is granted; reading it then reads the dataset, the store and the keys wherever no device
/// cgroup stops it), sets the host's name (`CAP_SYS_ADMIN`, and with it `init_module`, `bpf`,
/// `reboot`, `settimeofday`), and raises its own hard limits where it holds
/// `CAP_SYS_RESOURCE`.
#[test]
fn a_confined_program_holds_no_capability_over_the_host() {
    if !supported() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let scratch = tempfile::tempdir().unwrap();
    let dev = std::fs::metadata(scratch.path()).unwrap().dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let script = format!(
        "mknod disk b {major} {minor} 2>>err && echo mknod; \
         /usr/bin/python3 -c \"import ctypes,os,sys; n=os.uname().nodename.encode(); \
         sys.exit(ctypes.CDLL(None).sethostname(n, len(n)))\" 2>>err && echo sethostname; \
         (ulimit -H -t unlimited) 2>>err && echo rlimit"
    );
    let mut s = shell(scratch.path(), &script);
    s.limits.cpu_seconds = 5;
    let out = s.run(b"", Confinement::Sandboxed).unwrap();
    let did: Vec<String> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
    eprintln!("the confined program could: {did:?}");
    assert!(did.is_empty(), "a confined program used root's capabilities over the host: {did:?}");
}

/// The wall-time limit must hold whatever the program does: a child it leaves behind holding
/// its standard output open makes `Sandbox::run` wait for that child, however long it lives,
/// after the program itself has exited (and the party's step never finishes).
#[test]
fn a_program_whose_child_keeps_its_output_open_is_stopped_at_its_wall_time() {
    let scratch = tempfile::tempdir().unwrap();
    let mut s = shell(scratch.path(), "sleep 15 & echo $! > pid; echo '{\"update\": [0]}'");
    s.limits.wall = Duration::from_secs(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    let confinement = if supported() { Confinement::Sandboxed } else { Confinement::None };
    std::thread::spawn(move || {
        let _ = tx.send(s.run(b"", confinement).map(|o| o.status));
    });
    let returned = rx.recv_timeout(Duration::from_secs(6));
    let pid: Option<u32> = std::fs::read_to_string(scratch.path().join("pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    if let Some(pid) = pid {
        kill(pid);
    }
    assert!(
        returned.is_ok(),
        "Sandbox::run with a 1 s wall limit had not returned after {:?}: it waits for the program's child",
        started.elapsed()
    );
}

/// A step's program is gone when the step is: no process it started may keep running (with
/// the step's rows in memory, its CPU and memory limits renewed per process, and no parent
/// death signal) after `Sandbox::run` returns.
#[test]
fn no_process_of_a_program_outlives_its_run() {
    let scratch = tempfile::tempdir().unwrap();
    // A duration no other process uses, to find the child by (its id inside the program's
    // PID namespace means nothing outside it).
    let s = shell(
        scratch.path(),
        "setsid sleep 31.4159 <&- >child.out 2>&1 & echo '{\"update\": [0]}'",
    );
    let confinement = if supported() { Confinement::Sandboxed } else { Confinement::None };
    let out = s.run(b"", confinement).unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(200));
    let survivors: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"31.4159"))
                && is_running(*pid)
        })
        .collect();
    for pid in &survivors {
        kill(*pid);
    }
    if confinement == Confinement::Sandboxed {
        assert!(
            survivors.is_empty(),
            "processes {survivors:?}, started by the program, still run after its step ended"
        );
    }
}

#[test]
fn a_confined_program_cannot_change_files_outside_its_scratch() {
    use std::os::unix::fs::PermissionsExt;
    if !supported() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let key = elsewhere.path().join("identity.seed");
    std::fs::write(&key, "0123456789abcdef").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = shell(scratch.path(), &format!("chmod 0666 {:?}", key.display().to_string()));
    let out = s.run(b"", Confinement::Sandboxed).unwrap();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "a confined program changed the key file's mode to {mode:o} (exit {:?})",
        out.status
    );
}
