//! Runs a program its owner approved but does not trust: with no network, read access to the
//! paths the owner names only, write access to one scratch directory only, and bounded CPU
//! time, memory, file size, output and wall time.
//!
//! On Linux the child is confined between `fork` and `exec`:
//!
//! - it enters a new network namespace (with a new user namespace when the party is not
//!   root), where no interface is up, so no socket reaches anything;
//! - a Landlock ruleset (kernel 5.13 and later) allows reading and executing beneath the
//!   read-only paths and everything beneath the scratch directory, and nothing else; from
//!   Landlock ABI 4 it also refuses every TCP bind and connect, and from ABI 6 signals to and
//!   abstract sockets of processes outside the sandbox;
//! - `no_new_privs` is set, resource limits are lowered, and the child is killed if the
//!   party dies.
//!
//! The ruleset is built in the parent; between `fork` and `exec` the child makes only
//! async-signal-safe system calls. Where either confinement is unavailable, [`Sandbox::run`]
//! refuses with [`Error::Unsupported`] and the caller decides, by its owner's explicit
//! setting, whether to run the program without one ([`Confinement::None`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The system cannot confine a program: no network namespace or no Landlock.
    #[error("no sandbox on this system: {0}")]
    Unsupported(String),
    /// The program could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A path to allow could not be opened.
    #[error("{path}: {source}")]
    Path {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The program ran longer than its wall-time limit and was killed.
    #[error("the program ran longer than {0:?} and was killed")]
    TimedOut(Duration),
    /// The program wrote more than its output limit and was killed.
    #[error("the program wrote more than {0} bytes to its standard output and was killed")]
    OutputTooLarge(usize),
    /// Reading or writing the program's pipes failed.
    #[error("talking to the program: {0}")]
    Io(#[from] std::io::Error),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// How a program is confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confinement {
    /// A network namespace and Landlock; refused where unavailable.
    Sandboxed,
    /// No confinement beyond the limits: only where an owner explicitly allowed it.
    None,
}

/// The limits a program runs under.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Wall time, after which the program is killed.
    pub wall: Duration,
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Address space in bytes (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Largest file the program may write (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
    /// Most bytes read from its standard output.
    pub output_bytes: usize,
    /// Most bytes of its standard error kept (the last ones).
    pub error_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall: Duration::from_secs(600),
            cpu_seconds: 1200,
            memory_bytes: 8 << 30,
            file_bytes: 1 << 30,
            output_bytes: 256 << 20,
            error_bytes: 4096,
        }
    }
}

/// A finished program.
#[derive(Debug)]
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// The end of its standard error.
    pub stderr_tail: Vec<u8>,
}

/// A program, its arguments, the paths it may read and the directory it may write.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Paths it may read and execute beneath (directories) or read (files).
    pub read_only: Vec<PathBuf>,
    /// Its working directory, the only place it may write; also `HOME` and `TMPDIR`.
    pub scratch: PathBuf,
    /// Environment variables set on top of a cleared environment.
    pub env: Vec<(String, String)>,
    /// Its limits.
    pub limits: Limits,
}

/// Paths most interpreters need to start: the system's programs and libraries, the dynamic
/// loader's cache and the null and random devices. Configuration directories, `/proc`,
/// `/home` and `/tmp` are not among them.
pub const SYSTEM_READ_ONLY: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/null",
    "/dev/urandom",
];

impl Sandbox {
    /// Runs the program with `input` on its standard input, confined as asked.
    pub fn run(&self, input: &[u8], confinement: Confinement) -> Result<Output> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(&self.scratch)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.scratch)
            .env("TMPDIR", &self.scratch)
            .env("LANG", "C.UTF-8")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let ruleset = match confinement {
            Confinement::Sandboxed => Some(linux::Ruleset::new(&self.read_only, &self.scratch)?),
            Confinement::None => None,
        };
        linux::confine(&mut command, ruleset.as_ref(), &self.limits)?;
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        drop(ruleset);
        // Standard input and standard error on threads of their own, so neither pipe can
        // fill while the other is waited on.
        let mut stdin = child.stdin.take().ok_or_else(|| pipe("standard input"))?;
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            // A program that exits without reading its input closes the pipe: not an error.
            let _ = stdin.write_all(&input);
        });
        let mut stderr = child.stderr.take().ok_or_else(|| pipe("standard error"))?;
        let keep = self.limits.error_bytes;
        let (tail_sent, errors) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > keep {
                    tail.drain(..tail.len() - keep);
                }
            }
            let _ = tail_sent.send(tail);
        });
        let mut stdout = child.stdout.take().ok_or_else(|| pipe("standard output"))?;
        let limit = self.limits.output_bytes;
        let overflow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = overflow.clone();
        let (sent, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let read = (&mut stdout).take(limit as u64 + 1).read_to_end(&mut out);
            if read.as_ref().is_ok_and(|n| *n > limit) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            let _ = sent.send(read.map(|_| out));
        });
        let deadline = Instant::now() + self.limits.wall;
        let outcome = loop {
            if overflow.load(std::sync::atomic::Ordering::SeqCst) {
                break Err(Error::OutputTooLarge(limit));
            }
            if let Some(status) = child.try_wait()? {
                break Ok(status);
            }
            if Instant::now() >= deadline {
                break Err(Error::TimedOut(self.limits.wall));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Whatever happened, nothing the program started outlives it: its process group is
        // killed (confined, its PID namespace has died with it already).
        linux::kill_group(child.id());
        let status = match outcome {
            Ok(status) => status,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let _ = writer.join();
        // A process that left the group may still hold the pipes: wait for them a little only.
        let grace = Duration::from_secs(2);
        let stdout = match output.recv_timeout(grace) {
            Ok(read) => read?,
            Err(_) => return Err(pipe("standard output")),
        };
        let stderr_tail = errors.recv_timeout(grace).unwrap_or_default();
        if overflow.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::OutputTooLarge(limit));
        }
        Ok(Output { status, stdout, stderr_tail })
    }
}

fn pipe(which: &str) -> Error {
    Error::Io(std::io::Error::other(format!("the program's {which} pipe was lost")))
}

/// Whether this system can confine programs: the Landlock ABI, or why not. The first call
/// confines a shell that does nothing, so that a system whose namespaces are unavailable (a
/// container's seccomp profile, `user.max_user_namespaces = 0`) is found out before any job.
pub fn support() -> std::result::Result<u32, String> {
    static PROBE: std::sync::OnceLock<std::result::Result<u32, String>> =
        std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let abi = linux::support()?;
            let scratch =
                std::env::temp_dir().join(format!("veil-sandbox-probe-{}", std::process::id()));
            std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
            let probe = Sandbox {
                program: PathBuf::from("/bin/sh"),
                args: vec!["-c".into(), "exit 0".into()],
                read_only: SYSTEM_READ_ONLY.iter().map(PathBuf::from).collect(),
                scratch: scratch.clone(),
                env: Vec::new(),
                limits: Limits { wall: Duration::from_secs(10), ..Limits::default() },
            };
            let ran = probe.run(b"", Confinement::Sandboxed);
            let _ = std::fs::remove_dir_all(&scratch);
            match ran {
                Ok(out) if out.status.success() => Ok(abi),
                Ok(out) => Err(format!("a confined shell exited with {}", out.status)),
                Err(e) => Err(format!("a confined shell could not run: {e}")),
            }
        })
        .clone()
}

/// Whether `path` exists: [`SYSTEM_READ_ONLY`] names paths some systems lack.
fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux {
    //! The system calls. Landlock's are made through `syscall`, with the structures of
    //! `<linux/landlock.h>`.

    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};

    use super::{Error, Limits, Result};

    const CREATE_RULESET_VERSION: libc::c_uint = 1;
    const RULE_PATH_BENEATH: libc::c_int = 1;

    // Filesystem rights, by the ABI that introduced them.
    const FS_EXECUTE: u64 = 1 << 0;
    const FS_WRITE_FILE: u64 = 1 << 1;
    const FS_READ_FILE: u64 = 1 << 2;
    const FS_READ_DIR: u64 = 1 << 3;
    const FS_MAKE_CHAR: u64 = 1 << 6;
    const FS_MAKE_BLOCK: u64 = 1 << 11;
    const FS_ABI1: u64 = (1 << 13) - 1;
    const FS_REFER: u64 = 1 << 13; // ABI 2
    const FS_TRUNCATE: u64 = 1 << 14; // ABI 3
    const FS_IOCTL_DEV: u64 = 1 << 15; // ABI 5
    /// Rights that apply to a file rather than a directory.
    const FS_FILE: u64 = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV;
    // Network rights (ABI 4) and scopes (ABI 6).
    const NET_BIND_TCP: u64 = 1 << 0;
    const NET_CONNECT_TCP: u64 = 1 << 1;
    const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
    const SCOPE_SIGNAL: u64 = 1 << 1;

    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
        scoped: u64,
    }

    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }

    fn abi() -> std::result::Result<u32, String> {
        // SAFETY: with a null attribute, size 0 and the version flag, the call only reports
        // the ABI version; it reads and writes no memory.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        };
        if v < 1 {
            let e = std::io::Error::last_os_error();
            return Err(format!(
                "Landlock is not available ({e}); it needs Linux 5.13 or later with Landlock enabled"
            ));
        }
        Ok(v as u32)
    }

    pub(super) fn support() -> std::result::Result<u32, String> {
        abi()
    }

    /// Kills the process group the child leads (it called `setsid`).
    pub(super) fn kill_group(pid: u32) {
        if let Ok(pid) = i32::try_from(pid) {
            // SAFETY: a signal to a process group; no memory is involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }

    /// A Landlock ruleset built in the parent, applied by the child.
    pub(super) struct Ruleset {
        fd: OwnedFd,
    }

    impl Ruleset {
        pub(super) fn new(read_only: &[PathBuf], scratch: &Path) -> Result<Self> {
            let abi = abi().map_err(Error::Unsupported)?;
            let mut fs = FS_ABI1;
            if abi >= 2 {
                fs |= FS_REFER;
            }
            if abi >= 3 {
                fs |= FS_TRUNCATE;
            }
            if abi >= 5 {
                fs |= FS_IOCTL_DEV;
            }
            let net = if abi >= 4 { NET_BIND_TCP | NET_CONNECT_TCP } else { 0 };
            let scoped = if abi >= 6 { SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL } else { 0 };
            let attr = RulesetAttr { handled_access_fs: fs, handled_access_net: net, scoped };
            // The structure grew with the ABI: pass the size this kernel knows.
            let size = match abi {
                1..=3 => 8,
                4 | 5 => 16,
                _ => 24,
            };
            // SAFETY: `attr` is a live, initialised `landlock_ruleset_attr` of at least
            // `size` bytes; the kernel reads `size` bytes of it.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    &attr as *const RulesetAttr,
                    size,
                    0,
                )
            };
            if fd < 0 {
                return Err(Error::Unsupported(format!(
                    "creating a Landlock ruleset: {}",
                    std::io::Error::last_os_error()
                )));
            }
            // SAFETY: the call returned a new file descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let ruleset = Self { fd };
            let read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR;
            for path in read_only.iter().filter(|p| super::exists(p)) {
                ruleset.allow(path, read & fs)?;
            }
            // Everything in its scratch directory but device nodes.
            ruleset.allow(scratch, fs & !(FS_MAKE_CHAR | FS_MAKE_BLOCK))?;
            // The null device is written to as well as read.
            ruleset.allow(Path::new("/dev/null"), (read | FS_WRITE_FILE) & fs)?;
            Ok(ruleset)
        }

        fn allow(&self, path: &Path, rights: u64) -> Result<()> {
            let failed = |source| Error::Path { path: path.display().to_string(), source };
            let c = std::ffi::CString::new(path.as_os_str().as_bytes())
                .map_err(|_| failed(std::io::Error::other("a path with a NUL byte")))?;
            // SAFETY: `c` is a NUL-terminated path that outlives the call.
            let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if raw < 0 {
                return Err(failed(std::io::Error::last_os_error()));
            }
            // SAFETY: `open` returned a new file descriptor that nothing else owns.
            let parent = unsafe { OwnedFd::from_raw_fd(raw) };
            let is_dir = std::fs::metadata(path).map_err(failed)?.is_dir();
            let allowed = if is_dir { rights } else { rights & FS_FILE };
            let attr = PathBeneathAttr { allowed_access: allowed, parent_fd: parent.as_raw_fd() };
            // SAFETY: both descriptors are open, and `attr` is a live, initialised
            // `landlock_path_beneath_attr` the kernel only reads.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    self.fd.as_raw_fd(),
                    RULE_PATH_BENEATH,
                    &attr as *const PathBeneathAttr,
                    0u32,
                )
            };
            if r < 0 {
                return Err(failed(std::io::Error::last_os_error()));
            }
            Ok(())
        }
    }

    /// The seccomp filter: system calls a confined program may not make, refused with
    /// `EACCES` (sockets of any family, truncating by path, and changing any file's mode,
    /// owner, times or attributes, which Landlock does not mediate); other architectures'
    /// calls are refused outright.
    fn seccomp_filter() -> Vec<libc::sock_filter> {
        #[cfg(target_arch = "x86_64")]
        const ARCH: u32 = 0xc000_003e;
        #[cfg(target_arch = "aarch64")]
        const ARCH: u32 = 0xc000_00b7;
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        const ARCH: u32 = 0;
        const LOAD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
        const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
        const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
        const RET: u16 = 0x06; // BPF_RET | BPF_K
        const ALLOW: u32 = 0x7fff_0000;
        const KILL: u32 = 0x8000_0000;
        const DENY: u32 = 0x0005_0000 | libc::EACCES as u32;
        let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        #[allow(clippy::useless_conversion)]
        let denied: Vec<u32> = [
            libc::SYS_socket,
            // Landlock mediates truncating a file by its path from ABI 3 only.
            libc::SYS_truncate,
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_fchown,
            libc::SYS_fchownat,
            libc::SYS_utimensat,
            libc::SYS_setxattr,
            libc::SYS_lsetxattr,
            libc::SYS_fsetxattr,
            libc::SYS_removexattr,
            libc::SYS_lremovexattr,
            libc::SYS_fremovexattr,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_chmod,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_chown,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_lchown,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_utime,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_utimes,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_futimesat,
            // fchmodat2 (Linux 6.6), by number: the same on both architectures.
            452,
        ]
        .into_iter()
        .map(|n| n as u32)
        .collect();
        let mut f = vec![
            op(LOAD, 0, 0, 4), // the architecture
            op(JEQ, 1, 0, ARCH),
            op(RET, 0, 0, KILL),
            op(LOAD, 0, 0, 0),          // the system call's number
            op(JGE, 0, 1, 0x4000_0000), // x32 calls on x86_64
            op(RET, 0, 0, KILL),
        ];
        for n in denied {
            f.push(op(JEQ, 0, 1, n));
            f.push(op(RET, 0, 0, DENY));
        }
        f.push(op(RET, 0, 0, ALLOW));
        f
    }

    /// Arranges for the child to confine itself when given a ruleset, and to lower its limits
    /// in any case. Confined, the child enters new user, network and PID namespaces (so it
    /// holds no capability over the host, reaches no network, and every process it starts
    /// dies with it), applies Landlock and the seccomp filter, then forks: the program runs as
    /// the first process of the new PID namespace while the child waits for it and exits with
    /// its status.
    pub(super) fn confine(
        command: &mut std::process::Command,
        ruleset: Option<&Ruleset>,
        limits: &Limits,
    ) -> Result<()> {
        let ruleset = ruleset.map(|r| r.fd.as_raw_fd());
        let rlimits = [
            (libc::RLIMIT_CPU, limits.cpu_seconds),
            (libc::RLIMIT_AS, limits.memory_bytes),
            (libc::RLIMIT_FSIZE, limits.file_bytes),
            (libc::RLIMIT_CORE, 0),
        ];
        let filter = seccomp_filter();
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe system calls on values captured before the fork (the filter's
        // instructions were allocated in the parent and are only read): no allocation, no
        // lock. The child it forks either returns to exec the program or waits and `_exit`s.
        unsafe {
            command.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                // Its own process group, so that the party can stop all of it at once.
                if libc::setsid() < 0 {
                    return fail();
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return fail();
                }
                for (resource, value) in rlimits {
                    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
                    if libc::setrlimit(resource, &limit) != 0 {
                        return fail();
                    }
                }
                let Some(fd) = ruleset else { return Ok(()) };
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWPID) != 0
                {
                    return fail();
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return fail();
                }
                if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0 {
                    return fail();
                }
                let program = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &program as *const libc::sock_fprog as libc::c_ulong,
                    0,
                    0,
                ) != 0
                {
                    return fail();
                }
                match libc::fork() {
                    -1 => fail(),
                    0 => {
                        // The program, first process of its PID namespace: when it exits, the
                        // kernel kills every process it left; when the waiting child dies, so
                        // does it.
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                            return fail();
                        }
                        Ok(())
                    }
                    pid => {
                        // The waiting child holds no descriptor of the program's: its pipes
                        // end when the program's do, and the spawn's error pipe when it execs.
                        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                        let mut status = 0;
                        while libc::waitpid(pid, &mut status, 0) < 0 {
                            if *libc::__errno_location() != libc::EINTR {
                                libc::_exit(126);
                            }
                        }
                        let code = if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        };
                        libc::_exit(code)
                    }
                }
            });
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod linux {
    use std::path::{Path, PathBuf};

    use super::{Error, Limits, Result};

    pub(super) fn support() -> std::result::Result<u32, String> {
        Err("programs are confined on Linux only (network namespaces and Landlock)".into())
    }

    pub(super) fn kill_group(_: u32) {}

    pub(super) struct Ruleset;

    impl Ruleset {
        pub(super) fn new(_: &[PathBuf], _: &Path) -> Result<Self> {
            Err(Error::Unsupported(support().unwrap_err()))
        }
    }

    pub(super) fn confine(
        _: &mut std::process::Command,
        _: Option<&Ruleset>,
        _: &Limits,
    ) -> Result<()> {
        Ok(())
    }
}
