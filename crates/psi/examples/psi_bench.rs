//! Both roles of a private set intersection in one process, on n × n random 64-bit keys.
//!
//! ```text
//! cargo run --release -p veil-psi --example psi_bench -- [n] [overlap] [size-only|members] [seed]
//! cargo run --release -p veil-psi --example psi_bench -- 1000000 0.5
//! ```
//!
//! Every message goes through its encoding and decoding. The tests run [`run`] on a small set
//! (they include this file as a module). It prints the wall time, the CPU time
//! of each side, the bytes each side sends, the peak resident memory, and the CPU time per key
//! against a bound made of the primitives' single-thread costs measured here: per key of its
//! own a party hashes to the group once, multiplies twice (once its own key, once the peer's
//! blinded key), decompresses once and takes two shares of a batched compression.
//!
//! CPU time is read from Linux's `/proc/self/task/*/schedstat` (nanoseconds each thread has
//! run, summed over the threads): std has no `getrusage`. The driver calls one side at a
//! time and that side's work runs on rayon's pool, so the process's CPU time while a side's
//! call runs is that side's; what falls between calls (rayon workers winding down, the
//! driver's loop) is counted in the whole process's figure only. Encoding a message counts
//! for its sender, decoding it for its receiver.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha512};
use veil_psi::{
    Client, ClientMessage, KeyPolicy, KeySet, Mode, PsiParams, Server, ServerMessage, Session,
};

/// The CPU time every thread of this process has run so far, if Linux says.
fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(text) = std::fs::read_to_string(entry.ok()?.path().join("schedstat")) else {
            continue; // a thread that just ended
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Time spent by one side: wall and CPU.
#[derive(Default)]
struct Meter {
    wall: Duration,
    cpu: Duration,
}

impl Meter {
    fn run<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (cpu0, t0) = (process_cpu(), Instant::now());
        let out = f();
        self.wall += t0.elapsed();
        if let (Some(a), Some(b)) = (cpu0, process_cpu()) {
            self.cpu += b.saturating_sub(a);
        }
        out
    }
}

/// A bijection of u64 (SplitMix64's finaliser), so distinct inputs give distinct keys.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Single-thread cost of each primitive, in seconds per operation.
struct Primitives {
    hash: f64,
    mul: f64,
    decompress: f64,
    batch_compress: f64,
}

fn primitives() -> Primitives {
    const N: usize = 2048;
    let per = |t: Instant| t.elapsed().as_secs_f64() / N as f64;
    let t = Instant::now();
    let points: Vec<RistrettoPoint> = (0..N as u64)
        .map(|i| {
            let d = Sha512::new().chain_update(b"bench").chain_update(i.to_le_bytes()).finalize();
            RistrettoPoint::from_uniform_bytes(&d.into())
        })
        .collect();
    let hash = per(t);
    let k = Scalar::from_bytes_mod_order([0x42; 32]);
    let t = Instant::now();
    let multiplied: Vec<RistrettoPoint> = points.iter().map(|p| k * p).collect();
    let mul = per(t);
    let t = Instant::now();
    let compressed: Vec<CompressedRistretto> =
        multiplied.chunks(256).flat_map(RistrettoPoint::double_and_compress_batch).collect();
    let batch_compress = per(t);
    let t = Instant::now();
    let n = compressed.iter().filter(|c| c.decompress().is_some()).count();
    let decompress = per(t);
    assert_eq!(n, N);
    Primitives { hash, mul, decompress, batch_compress }
}

/// What one exchange cost.
pub(crate) struct Report {
    /// Wall time of the whole run.
    pub(crate) wall: Duration,
    /// Wall time of making the two key sets.
    pub(crate) prepare_wall: Duration,
    /// A's time (key set included): wall and CPU.
    pub(crate) a: (Duration, Duration),
    /// CPU time of each side's key set.
    pub(crate) prepare_cpu: (Duration, Duration),
    /// B's time (key set included): wall and CPU.
    pub(crate) b: (Duration, Duration),
    /// The CPU time of the whole process over the run.
    pub(crate) process_cpu: Duration,
    /// Bytes each side sent.
    pub(crate) sent: (usize, usize),
}

/// Runs an exchange on n × n keys of which `common` are shared, checks its result, and
/// reports what it cost.
pub(crate) fn run(n: usize, common: usize, mode: Mode, seed: u64) -> Report {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let params = PsiParams::new(Session([seed as u8; 32]), mode);
    let (mut a_meter, mut b_meter) = (Meter::default(), Meter::default());
    let cpu_start = process_cpu();
    let start = Instant::now();

    // A holds values 0..n, B values n-common..2n-common, each a random-looking 64-bit key.
    let key = |i: u64| mix(i ^ seed << 40).to_string();
    let a_keys = a_meter.run(|| KeySet::new(KeyPolicy::default(), (0..n as u64).map(key)).unwrap());
    let b_keys = b_meter.run(|| {
        let range = (n - common) as u64..(2 * n - common) as u64;
        KeySet::new(KeyPolicy::default(), range.map(key)).unwrap()
    });
    let prepare_cpu = (a_meter.cpu, b_meter.cpu);
    let prepare_wall = start.elapsed();

    let mut client = a_meter.run(|| Client::new(&params, a_keys, &mut rng).unwrap());
    let mut server = b_meter.run(|| Server::new(&params, b_keys, &mut rng).unwrap());
    let (mut a_sent, mut b_sent) = (0usize, 0usize);
    loop {
        let mut progress = false;
        if let Some(bytes) = a_meter.run(|| client.poll_transmit().map(|m| m.encode())) {
            a_sent += bytes.len();
            b_meter
                .run(|| server.handle_message(ClientMessage::decode(&bytes).unwrap(), &mut rng))
                .unwrap();
            progress = true;
        }
        if let Some(bytes) = b_meter.run(|| server.poll_transmit().map(|m| m.encode())) {
            b_sent += bytes.len();
            a_meter.run(|| client.handle_message(ServerMessage::decode(&bytes).unwrap())).unwrap();
            progress = true;
        }
        if !progress {
            break;
        }
    }
    let wall = start.elapsed();
    let process_cpu = match (cpu_start, process_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };

    let output = client.output().expect("the exchange finished");
    assert_eq!(output.intersection_size(), common as u64, "the intersection's size");
    assert_eq!(output.server_count(), n as u64);
    if let Some(members) = output.members() {
        assert!(members.iter().eq(n - common..n), "the members are A's last `common` keys");
    }
    assert_eq!(server.output().expect("finished").client_count(), n as u64);
    Report {
        wall,
        prepare_wall,
        a: (a_meter.wall, a_meter.cpu),
        b: (b_meter.wall, b_meter.cpu),
        prepare_cpu,
        process_cpu,
        sent: (a_sent, b_sent),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(100_000, |a| a.parse().expect("n: a number of keys"));
    let overlap: f64 = args.get(1).map_or(0.5, |a| a.parse().expect("overlap: in [0, 1]"));
    let mode = match args.get(2).map(String::as_str) {
        None | Some("size-only") => Mode::SizeOnly,
        Some("members") => Mode::IntersectionToClient,
        Some(other) => panic!("mode {other}: size-only or members"),
    };
    let seed: u64 = args.get(3).map_or(1, |a| a.parse().expect("seed: a number"));
    assert!((0.0..=1.0).contains(&overlap), "overlap must be in [0, 1]");
    let common = (n as f64 * overlap).round() as usize;

    println!(
        "veil-psi: |A| = |B| = {n}, overlap {overlap} ({common} common), {mode:?}, batch {}, \
         {} rayon threads",
        veil_psi::MAX_BATCH,
        rayon::current_num_threads()
    );
    let unit = primitives();
    let r = run(n, common, mode, seed);

    let s = |d: Duration| d.as_secs_f64();
    let mb = |b: usize| b as f64 / 1e6;
    let (a_cpu, b_cpu) = (r.a.1, r.b.1);
    println!("result: |A ∩ B| = {common} as expected; A learns |B| = {n}, B learns |A| = {n}");
    println!(
        "wall: {:.2} s (key sets {:.2} s, exchange {:.2} s)",
        s(r.wall),
        s(r.prepare_wall),
        s(r.wall - r.prepare_wall)
    );
    println!(
        "CPU: A {:.2} s (key set {:.2} s), B {:.2} s (key set {:.2} s), both {:.2} s; whole \
         process {:.2} s",
        s(a_cpu),
        s(r.prepare_cpu.0),
        s(b_cpu),
        s(r.prepare_cpu.1),
        s(a_cpu + b_cpu),
        s(r.process_cpu)
    );
    let (a_sent, b_sent) = r.sent;
    println!(
        "sent: A → B {a_sent} B ({:.2} MB), B → A {b_sent} B ({:.2} MB), total {:.2} MB = \
         {:.2} MiB ({:.1} B per key pair)",
        mb(a_sent),
        mb(b_sent),
        mb(a_sent + b_sent),
        (a_sent + b_sent) as f64 / (1 << 20) as f64,
        (a_sent + b_sent) as f64 / n.max(1) as f64
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!("peak resident memory: {}", line.trim_start_matches("VmHWM:").trim());
        }
    }
    // Per key of its own (n × n), each side: hash + 2 mul + decompress + 2 batched compress.
    let per_key = unit.hash + 2.0 * unit.mul + unit.decompress + 2.0 * unit.batch_compress;
    println!(
        "primitives (one thread): hash to group {:.1} µs, scalar mul {:.1} µs, decompress \
         {:.1} µs, batched compress {:.2} µs",
        unit.hash * 1e6,
        unit.mul * 1e6,
        unit.decompress * 1e6,
        unit.batch_compress * 1e6
    );
    let nf = n.max(1) as f64;
    let (a_exchange, b_exchange) = (s(a_cpu - r.prepare_cpu.0), s(b_cpu - r.prepare_cpu.1));
    println!(
        "per key and side: bound {:.1} µs; measured A {:.1} µs, B {:.1} µs of exchange CPU \
         ({:.2}× and {:.2}× the bound); bound for both sides {:.1} s",
        per_key * 1e6,
        a_exchange / nf * 1e6,
        b_exchange / nf * 1e6,
        a_exchange / nf / per_key,
        b_exchange / nf / per_key,
        2.0 * per_key * nf
    );
}
