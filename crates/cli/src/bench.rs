//! `veil bench`: secure aggregation in memory, and whole jobs over loopback gRPC with mutual TLS.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use veil_proto::v1::JobState;
use veil_protocol::Stage;
use veil_testkit::bench::{self, BenchConfig, BenchReport};

#[derive(Subcommand)]
pub(crate) enum BenchTarget {
    /// Whole secure aggregation rounds in memory: time, CPU and bytes per role.
    Secagg {
        /// Parties (with --dim; otherwise the standard configurations run).
        #[arg(long, requires = "dim")]
        parties: Option<usize>,
        /// Elements per vector.
        #[arg(long)]
        dim: Option<usize>,
        /// Neighbours per party (default: all pairs up to 10 parties, 2⌈log₂ n⌉ beyond).
        #[arg(long)]
        neighbours: Option<usize>,
        /// Fraction of parties that drop before sending their masked input.
        #[arg(long, default_value_t = 0.0)]
        dropout: f64,
        /// Repetitions per configuration; the fastest is reported.
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        repeat: usize,
    },
    /// A SQL query over the three flight airports (336,776 rows) grouped by carrier with five
    /// aggregates, over loopback gRPC with mutual TLS, beside the same query run by the same
    /// engine over the pooled file.
    Query {
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 5, value_parser = at_least_one())]
        repeat: usize,
    },
    /// Training jobs over loopback gRPC with mutual TLS, secure against plain aggregation: an
    /// MLP on the digits (four parties) and the breast-cancer logistic regression of
    /// benches/flower (three).
    Train {
        /// Rounds per job (per kind with --in-memory); the median round is reported.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..))]
        rounds: u32,
        /// Jobs of each kind.
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        repeat: usize,
        /// Run the MLP rounds in one process instead, with in-memory secure aggregation.
        #[arg(long)]
        in_memory: bool,
    },
    /// Record-level DP-SGD's per-example clipping on one core: clipped gradient sums of the
    /// digits MLP (64-32-10) over batches of the digits' rows, in examples per second (compare
    /// with Opacus: benches/opacus/run.sh runs both).
    Clip {
        /// Rows per batch.
        #[arg(long, default_value_t = 256, value_parser = at_least_one())]
        batch: usize,
        /// Seconds to run for at least.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Exact discrete Gaussian samples per second on one core.
    Dp {
        /// Samples per variance.
        #[arg(long, default_value_t = 2_000_000, value_parser = at_least_one())]
        samples: usize,
    },
    /// A private set intersection between two party processes over loopback gRPC with mutual
    /// TLS (the coordinator relaying): random 64-bit keys with the given overlap.
    Psi {
        /// Keys on each side.
        #[arg(long, default_value_t = 100_000, value_parser = at_least_one())]
        keys: usize,
        /// Fraction of the client's keys the server also holds.
        #[arg(long, default_value_t = 0.5)]
        overlap: f64,
    },
    /// Whole jobs over loopback gRPC with mutual TLS: an in-process coordinator and one party
    /// process per party, a secure round and a plain round of the same size, interleaved.
    Rounds {
        /// Party processes.
        #[arg(long, default_value_t = 10)]
        parties: usize,
        /// Elements per party vector.
        #[arg(long, default_value_t = 100_000)]
        dim: u32,
        /// Rounds of each kind; the median and the fastest are reported.
        #[arg(long, default_value_t = 5, value_parser = at_least_one())]
        repeat: usize,
    },
}

/// Counts of repetitions and samples start at one: a rate or median of nothing is no figure.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

pub(crate) async fn run(what: BenchTarget) -> Result<()> {
    match what {
        BenchTarget::Secagg { parties, dim, neighbours, dropout, repeat } => {
            secagg(parties, dim, neighbours, dropout, repeat)
        }
        BenchTarget::Rounds { parties, dim, repeat } => rounds(parties, dim, repeat).await,
        BenchTarget::Psi { keys, overlap } => psi(keys, overlap).await,
        BenchTarget::Query { repeat } => query(repeat).await,
        BenchTarget::Train { rounds, in_memory: true, .. } => crate::bench_train::in_memory(rounds),
        BenchTarget::Train { rounds, repeat, in_memory: false } => {
            crate::bench_train::services(rounds, repeat).await
        }
        BenchTarget::Clip { batch, seconds } => crate::bench_train::clipping(batch, seconds),
        BenchTarget::Dp { samples } => {
            dp(samples);
            Ok(())
        }
    }
}

fn secagg(
    parties: Option<usize>,
    dim: Option<usize>,
    neighbours: Option<usize>,
    dropout: f64,
    repeat: usize,
) -> Result<()> {
    let configs = match (parties, dim) {
        (Some(n), Some(d)) => {
            anyhow::ensure!(n >= 1, "--parties must be at least 1");
            anyhow::ensure!((0.0..1.0).contains(&dropout), "--dropout must be in [0, 1)");
            let mut c =
                if n <= 10 { BenchConfig::all_pairs(n, d) } else { BenchConfig::sparse(n, d) };
            if let Some(k) = neighbours {
                c.neighbours = k;
            }
            if dropout > 0.0 {
                c = c.with_dropout(dropout, Stage::MaskedInput);
            }
            vec![c]
        }
        _ => bench::default_configs(),
    };
    println!(
        "{:<58} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10} {:>9} {:>7}  sum",
        "configuration",
        "wall",
        "party cpu",
        "coord cpu",
        "quorum",
        "sent/pty",
        "recv/pty",
        "plain",
        "ratio"
    );
    for config in &configs {
        let mut best: Option<BenchReport> = None;
        for i in 0..repeat.max(1) {
            let r = bench::run(config, 7 + i as u64)?;
            anyhow::ensure!(
                r.correct,
                "{}: the unmasked sum differs from the plain sum",
                config.label()
            );
            if best.as_ref().is_none_or(|b| r.wall < b.wall) {
                best = Some(r);
            }
        }
        let r = best.expect("at least one repetition ran");
        println!(
            "{:<58} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10} {:>9} {:>6.1}x  exact over {}",
            config.label(),
            ms(r.wall),
            ms(r.party_cpu),
            ms(r.coordinator_cpu),
            ms(r.quorum_check),
            bytes(r.bytes_sent),
            bytes(r.bytes_received),
            ms(r.plain_wall),
            r.ratio(),
            r.contributors,
        );
        if let Some(note) = reference(config, &r) {
            println!("    {note}");
        }
    }
    Ok(())
}

/// The target and the outside reference a configuration is measured against.
fn reference(c: &BenchConfig, r: &BenchReport) -> Option<String> {
    let wall_ms = r.wall.as_secs_f64() * 1e3;
    let verdict = |target_ms: f64| if wall_ms < target_ms { "met" } else { "MISSED" };
    match (c.parties, c.vector_len, c.dropout > 0.0) {
        (10, 100_000, false) if c.neighbours == 9 => Some(format!(
            "target < 25 ms: {}; Flower 1.41 SecAgg+ in one process on this machine class: ≈ 190 ms \
             (plain 19 ms), so {:.1}x faster",
            verdict(25.0),
            190.0 / wall_ms
        )),
        (1_000, 100_000, true) => Some(format!("target < 5 s: {}", verdict(5_000.0))),
        _ => None,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn bytes(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// A coordinator in this process and one `veil party --dangerous-benchmark` process per
/// party, on loopback with mutual TLS; stopped (and the processes killed) on drop.
pub(crate) struct ProcessCluster {
    /// A jobs client for the consumer `analyst`.
    pub(crate) jobs: veil_proto::v1::jobs_client::JobsClient<tonic::transport::Channel>,
    /// The key that signs `analyst`'s jobs.
    pub(crate) signer: veil_proto::submission::Signer,
    /// Bytes of every envelope the parties sent the coordinator.
    pub(crate) inbound: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    children: Vec<tokio::process::Child>,
    _dir: tempfile::TempDir,
}

impl ProcessCluster {
    /// Starts it; `datasets(i)` is TOML appended to party `i`'s configuration (its dataset
    /// sections).
    pub(crate) async fn start(parties: usize, datasets: impl Fn(usize) -> String) -> Result<Self> {
        use std::io::Write;
        use veil_proto::v1::ListPartiesRequest;
        use veil_proto::v1::admin_client::AdminClient;
        use veil_proto::v1::jobs_client::JobsClient;

        let dir = tempfile::tempdir()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let names: Vec<String> = (0..parties).map(|i| format!("p{i}")).collect();
        let layout = veil_coordinator::consortium::create(
            dir.path(),
            &veil_coordinator::consortium::ConsortiumSpec {
                name: "bench".into(),
                parties: names,
                consumers: vec![("analyst".into(), false), ("operator".into(), true)],
                coordinator: addr,
            },
        )?;
        for (i, p) in layout.party_configs.iter().enumerate() {
            let mut f = std::fs::OpenOptions::new().append(true).open(p)?;
            f.write_all(datasets(i).as_bytes())?;
        }
        let mut config = veil_coordinator::CoordinatorFile::load(&layout.coordinator_config)?
            .into_config(false)?;
        let inbound = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = inbound.clone();
        config.inbound_tap = Some(std::sync::Arc::new(move |bytes: &[u8]| {
            counter.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }));
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(veil_coordinator::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for p in &layout.party_configs {
            let child = tokio::process::Command::new(&exe)
                .args(["party", "--dangerous-benchmark", "--config"])
                .arg(p)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a party process")?;
            children.push(child);
        }
        let consumer = |name: &str| layout.root.join("consumers").join(name).join("consumer.toml");
        let mut admin =
            AdminClient::new(veil_cli::consumer::channel(&consumer("operator"), false).await?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = admin.list_parties(ListPartiesRequest {}).await?.into_inner().parties;
            if list.iter().filter(|p| p.connected).count() == parties {
                break;
            }
            if Instant::now() > deadline {
                bail!("the party processes did not all connect within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let jobs = JobsClient::new(veil_cli::consumer::channel(&consumer("analyst"), false).await?);
        let signer = veil_cli::consumer::signer(&consumer("analyst"))?;
        Ok(Self { jobs, signer, inbound, stop: Some(stop), children, _dir: dir })
    }

    /// CPU time used so far by this process (the coordinator) and every party process.
    pub(crate) fn cpu(&self) -> Duration {
        let parties: Duration = self
            .children
            .iter()
            .filter_map(|c| c.id())
            .map(|pid| bench::cpu_of(&pid.to_string()))
            .sum();
        bench::process_cpu() + parties
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `veil bench psi`: two party processes intersect random keys; the wall time, the CPU of every
/// process, and the bytes the parties sent through the coordinator.
async fn psi(keys: usize, overlap: f64) -> Result<()> {
    use rand::{Rng, SeedableRng};
    use std::io::Write;
    use std::sync::atomic::Ordering;

    anyhow::ensure!((0.0..=1.0).contains(&overlap), "--overlap must be between 0 and 1");
    let dir = tempfile::tempdir()?;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
    let client: Vec<u64> = (0..keys).map(|_| rng.r#gen()).collect();
    let shared = (keys as f64 * overlap).round() as usize;
    let server: Vec<u64> =
        client[..shared].iter().copied().chain((shared..keys).map(|_| rng.r#gen())).collect();
    for (name, set) in [("client", &client), ("server", &server)] {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.path().join(format!("{name}.csv")))?);
        writeln!(f, "id")?;
        for k in set {
            writeln!(f, "{k}")?;
        }
    }
    let path = |i: usize| dir.path().join(if i == 0 { "client.csv" } else { "server.csv" });
    let cluster = ProcessCluster::start(2, |i| {
        format!(
            "\n[[datasets]]\nname = \"side{i}\"\npath = {:?}\ncolumns = {{ id = \"string\" }}\n\
             [datasets.policy]\njoin_keys = [\"id\"]\n",
            path(i).display().to_string()
        )
    })
    .await?;
    let spec = "kind = \"psi\"\nclient = { dataset = \"side0\", key = \"id\" }\n\
                server = { dataset = \"side1\", key = \"id\" }\n";
    let mut jobs = cluster.jobs.clone();
    let (cpu, bytes) = (cluster.cpu(), cluster.inbound.load(Ordering::Relaxed));
    let start = Instant::now();
    let s = cluster.signer.submit(&mut jobs, spec).await?;
    let last = crate::client::follow(&mut jobs, &s.job_id, false).await?;
    let wall = start.elapsed();
    if last.state() != JobState::Succeeded {
        bail!("benchmark intersection {}: {}", last.state().name(), last.detail);
    }
    let (cpu, bytes) = (cluster.cpu() - cpu, cluster.inbound.load(Ordering::Relaxed) - bytes);
    let result = jobs.result(veil_proto::v1::JobRef { job_id: last.job_id }).await?.into_inner();
    let answer: serde_json::Value = serde_json::from_str(&result.answer_json)?;
    anyhow::ensure!(
        answer["intersection_size"].as_u64() == Some(shared as u64),
        "the intersection came out {}, not {shared}",
        answer["intersection_size"]
    );
    let per_key = cpu.as_secs_f64() / (2 * keys) as f64 * 1e6;
    println!(
        "private set intersection, {keys} × {keys} keys, {:.0} % overlap, two party processes over \
         loopback gRPC with mutual TLS, the coordinator relaying",
        overlap * 100.0
    );
    println!(
        "  wall {:.2} s, CPU {:.2} s over the parties and the coordinator ({per_key:.1} µs per key)",
        wall.as_secs_f64(),
        cpu.as_secs_f64()
    );
    println!(
        "  through the coordinator: {:.2} MB sent by the parties ({:.1} bytes per key pair); \
         intersection {shared} as expected",
        bytes as f64 / 1e6,
        bytes as f64 / keys as f64
    );
    println!(
        "  the issue's target at 10^6 × 10^6: ≤ 90 s CPU for both sides, ≤ 80 MB on the wire; \
         OpenMined PSI 2.0.6 (P-256) took 410 s of CPU there (benches/psi)"
    );
    Ok(())
}

async fn rounds(parties: usize, dim: u32, repeat: usize) -> Result<()> {
    use veil_proto::v1::JobRef;

    anyhow::ensure!((2..=200).contains(&parties), "--parties must be between 2 and 200");
    let cluster = ProcessCluster::start(parties, |_| String::new()).await?;
    let mut jobs = cluster.jobs.clone();
    let mut secure = Vec::new();
    let mut plain = Vec::new();
    // CPU time per job, over the coordinator and every party process.
    let (mut secure_cpu, mut plain_cpu) = (Vec::new(), Vec::new());
    // Per kind, the job's phases in order, each with the times after submit it was reached.
    let mut secure_marks: Vec<(String, Vec<Duration>)> = Vec::new();
    let mut plain_marks: Vec<(String, Vec<Duration>)> = Vec::new();
    // One warm-up job of each kind, then interleaved measurements.
    for i in 0..=repeat {
        for is_plain in [false, true] {
            let spec = format!(
                "kind = \"synthetic\"\ndim = {dim}\nplain = {is_plain}\nmin_parties = {parties}\n"
            );
            let cpu = cluster.cpu();
            let start = Instant::now();
            let s = cluster.signer.submit(&mut jobs, &spec).await?;
            let mut stream = jobs.watch(JobRef { job_id: s.job_id.clone() }).await?.into_inner();
            let mut last = None;
            let mut marks = Vec::new();
            while let Some(status) = stream.message().await? {
                marks.push((phase(status.state().name(), &status.detail), start.elapsed()));
                last = Some(status);
            }
            let last = last.context("the coordinator closed the watch without a status")?;
            if last.state() != JobState::Succeeded {
                bail!("benchmark job {}: {}", last.state().name(), last.detail);
            }
            jobs.result(JobRef { job_id: s.job_id }).await?;
            let elapsed = start.elapsed();
            let used = cluster.cpu().saturating_sub(cpu);
            marks.push(("result fetched".into(), elapsed));
            if i > 0 {
                let (times, cpus, timeline) = if is_plain {
                    (&mut plain, &mut plain_cpu, &mut plain_marks)
                } else {
                    (&mut secure, &mut secure_cpu, &mut secure_marks)
                };
                times.push(elapsed);
                cpus.push(used);
                // By name, in the order first seen; a phase reported twice counts once.
                let mut seen = std::collections::BTreeSet::new();
                for (name, at) in marks {
                    if !seen.insert(name.clone()) {
                        continue;
                    }
                    match timeline.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, ats)) => ats.push(at),
                        None => timeline.push((name, vec![at])),
                    }
                }
            }
        }
    }
    drop(cluster);
    secure.sort();
    plain.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    println!(
        "{parties} party processes, d = {dim}, loopback gRPC with mutual TLS, {repeat} jobs of each kind \
         (submit to result, including the offer round trip)"
    );
    println!("  secure round: median {}  fastest {}", ms(median(&secure)), ms(secure[0]));
    println!("  plain round:  median {}  fastest {}", ms(median(&plain)), ms(plain[0]));
    secure_cpu.sort();
    plain_cpu.sort();
    println!(
        "  CPU per job over all {} processes (median): secure {}, plain {}; this machine has {} cores",
        parties + 1,
        ms(median(&secure_cpu)),
        ms(median(&plain_cpu)),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    for (kind, timeline) in [("secure", &mut secure_marks), ("plain", &mut plain_marks)] {
        println!("  {kind} job, median time after submit at which each phase was reported:");
        for (_, ats) in timeline.iter_mut() {
            ats.sort();
        }
        timeline.sort_by_key(|(_, ats)| median(ats));
        for (name, ats) in timeline.iter() {
            println!("    {:>9}  {name}", ms(median(ats)));
        }
    }
    let ratio = median(&secure).as_secs_f64() / median(&plain).as_secs_f64();
    println!(
        "  secure / plain: {ratio:.2}x (target < 1.5x: {}); secure round target < 500 ms: {}",
        if ratio < 1.5 { "met" } else { "MISSED" },
        if median(&secure) < Duration::from_millis(500) { "met" } else { "MISSED" }
    );
    println!(
        "  for scale: Flower 1.41 with 10 SuperNodes on loopback, ≈ 14 s per plain round and ≈ 53 s with SecAgg+ (stack notes)"
    );
    Ok(())
}

/// A job status as a phase name: its state, and the stage a round's detail names.
fn phase(state: &str, detail: &str) -> String {
    match detail.strip_prefix("round: ") {
        Some(stage) => stage.split(" done").next().unwrap_or(stage).to_string() + " closed",
        None if state == "offering" || state == "queued" => state.to_string(),
        None => format!("{state}: {}", detail.split(" over ").next().unwrap_or(detail)),
    }
}

fn dp(samples: usize) {
    use rand::RngCore;
    use veil_protocol::dp::{NoiseRng, discrete_gaussian};
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let mut rng = NoiseRng::from_seed(seed);
    println!("exact discrete Gaussian, one thread, {samples} samples per variance");
    for sigma2 in [1u64, 100, 10_000, 1_000_000, 1 << 40] {
        let start = Instant::now();
        let mut acc = 0i64;
        for _ in 0..samples {
            acc = acc.wrapping_add(discrete_gaussian(&mut rng, sigma2));
        }
        let rate = samples as f64 / start.elapsed().as_secs_f64();
        println!(
            "  σ² = {sigma2:>14}: {:>6.2} M samples/s (target ≥ 1 M/s: {}; OpenDP 0.16 ≈ 0.035–0.07 M/s on this machine class)  [{}]",
            rate / 1e6,
            if rate >= 1e6 { "met" } else { "MISSED" },
            acc & 1
        );
    }
}

const BENCH_SQL: &str = "SELECT carrier, COUNT(*), AVG(dep_delay), STDDEV(dep_delay), AVG(arr_delay), \
                         SUM(distance), HISTOGRAM(dep_delay, -100, 0, 15, 60, 180, 1500) \
                         FROM flights GROUP BY carrier";

async fn query(repeat: usize) -> Result<()> {
    use veil_analytics::{ColumnType, DatasetCatalog, Plan};
    use veil_party_worker::config::DatasetConfig;
    use veil_proto::v1::JobRef;
    use veil_testkit::cluster::{Cluster, ClusterSpec, DatasetSpec, PartySpec};

    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/flights");
    let carriers = [
        "9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN",
        "YV",
    ];
    let domain: Vec<String> = carriers.iter().map(|c| format!("\"{c}\"")).collect();
    let extra = format!(
        "bounds = {{ dep_delay = [-100.0, 1500.0], arr_delay = [-100.0, 1500.0], distance = [0.0, 5000.0] }}\n\
         domains = {{ carrier = [{}] }}\n",
        domain.join(", ")
    );
    let columns: Vec<(String, String)> = [
        ("carrier", "string"),
        ("dep_delay", "float"),
        ("arr_delay", "float"),
        ("distance", "float"),
    ]
    .iter()
    .map(|(c, t)| (c.to_string(), t.to_string()))
    .collect();
    let parties = ["ewr", "jfk", "lga"]
        .iter()
        .map(|a| PartySpec {
            name: a.to_string(),
            datasets: vec![DatasetSpec {
                name: "flights".into(),
                path: data.join(format!("{a}.csv")),
                columns: columns.clone(),
                extra_toml: extra.clone(),
            }],
            ..PartySpec::default()
        })
        .collect();
    let spec = ClusterSpec {
        parties,
        stage_timeout: Duration::from_secs(30),
        offer_timeout: Duration::from_secs(30),
        analyst_quota: None,
    };
    let cluster = Cluster::start(spec).await;
    let mut jobs = cluster.jobs().await;
    let request = serde_json::json!({ "sql": BENCH_SQL }).to_string();
    let mut joint = Vec::new();
    for i in 0..=repeat {
        let start = Instant::now();
        let s = cluster.signer("analyst").submit(&mut jobs, &request).await?;
        let last = crate::client::follow(&mut jobs, &s.job_id, false).await?;
        if last.state() != JobState::Succeeded {
            bail!("benchmark query {}: {}", last.state().name(), last.detail);
        }
        jobs.result(JobRef { job_id: s.job_id.clone() }).await?;
        if i > 0 {
            joint.push(start.elapsed());
        }
    }
    cluster.shutdown().await;

    // The same query, planned the same way, run by the same engine over the pooled file.
    let dir = tempfile::tempdir()?;
    let pooled_path = dir.path().join("flights.csv");
    let mut pooled = String::new();
    for (k, a) in ["ewr", "jfk", "lga"].iter().enumerate() {
        let text = std::fs::read_to_string(data.join(format!("{a}.csv")))?;
        let body =
            if k == 0 { text.as_str() } else { text.split_once('\n').map_or("", |(_, r)| r) };
        pooled.push_str(body);
    }
    std::fs::write(&pooled_path, pooled)?;
    let dataset = DatasetConfig {
        name: "flights".into(),
        path: pooled_path,
        postgres: None,
        columns: columns
            .iter()
            .map(|(c, t)| {
                (c.clone(), if t == "string" { ColumnType::String } else { ColumnType::Float })
            })
            .collect(),
        grade: Default::default(),
        tags: Default::default(),
        policy: Default::default(),
        bounds: [
            ("dep_delay", (-100.0, 1500.0)),
            ("arr_delay", (-100.0, 1500.0)),
            ("distance", (0.0, 5000.0)),
        ]
        .iter()
        .map(|(c, b)| (c.to_string(), *b))
        .collect(),
        domains: [("carrier".to_string(), carriers.iter().map(|c| c.to_string()).collect())]
            .into_iter()
            .collect(),
    };
    let catalog: DatasetCatalog = dataset.catalog();
    let spec = veil_analytics::sql::plan_sql(
        BENCH_SQL,
        &[catalog],
        &veil_analytics::sql::SqlOptions::default(),
    )?;
    let plan = Plan::new(&spec, &dataset.schema())?;
    let mut local = Vec::new();
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let v = veil_party_worker::data::aggregate_csv(&dataset, &plan, [0; 32])?;
        let _ = plan.answer(&v, vec![0], vec![])?;
        local.push(start.elapsed());
    }
    joint.sort();
    local.sort();
    let (j, l) = (joint[joint.len() / 2], local[local.len() / 2]);
    let ratio = j.as_secs_f64() / l.as_secs_f64();
    println!("query: {BENCH_SQL}");
    println!(
        "  joint over 3 parties (loopback gRPC, mutual TLS, secure aggregation): median {}",
        ms(j)
    );
    println!(
        "  pooled file, same engine, one process:                            median {}",
        ms(l)
    );
    println!(
        "  joint / pooled: {ratio:.2}x (target < 3x: {})",
        if ratio < 3.0 { "met" } else { "MISSED" }
    );
    Ok(())
}
