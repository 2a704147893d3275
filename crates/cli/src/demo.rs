//! `veil demo`: joint statistics over three hospitals' rows with secure aggregation.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use veil_protocol::{FixedPoint, IntegerRange, PartyId, RoundConfig, SessionId, Stage};
use veil_testkit::{Consortium, Fault, Simulation};

const HOSPITALS: [(&str, &str); 3] = [
    ("hospital_a", include_str!("../../../examples/data/breast_cancer/hospital_a.csv")),
    ("hospital_b", include_str!("../../../examples/data/breast_cancer/hospital_b.csv")),
    ("hospital_c", include_str!("../../../examples/data/breast_cancer/hospital_c.csv")),
];

/// The columns whose joint mean and standard deviation the demo computes.
const COLUMNS: [&str; 4] = ["mean_radius", "mean_texture", "mean_area", "worst_concavity"];

/// A hospital's table: the wanted columns and the label.
struct Table {
    columns: Vec<Vec<f64>>,
    benign: Vec<bool>,
}

fn parse(name: &str, text: &str) -> Result<Table> {
    let mut lines = text.lines();
    let header: Vec<&str> =
        lines.next().context(format!("{name}: empty file"))?.split(',').collect();
    let position = |c: &str| {
        header.iter().position(|h| *h == c).with_context(|| format!("{name}: no column {c:?}"))
    };
    let wanted: Vec<usize> = COLUMNS.iter().map(|c| position(c)).collect::<Result<_>>()?;
    let target = position("target")?;
    let mut table = Table { columns: vec![Vec::new(); COLUMNS.len()], benign: Vec::new() };
    for (row, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            bail!("{name}, row {}: {} cells, expected {}", row + 2, cells.len(), header.len());
        }
        let cell = |i: usize| -> Result<f64> {
            cells[i].parse().with_context(|| {
                format!(
                    "{name}, row {}, column {}: {:?} is not a number",
                    row + 2,
                    header[i],
                    cells[i]
                )
            })
        };
        for (k, &i) in wanted.iter().enumerate() {
            table.columns[k].push(cell(i)?);
        }
        table.benign.push(cell(target)? == 1.0);
    }
    Ok(table)
}

/// The vector a hospital contributes: `[rows, benign rows, Σx per column…, Σx² per column…]`.
/// Counts are integers; the sums are fixed-point. Only the masked vector leaves the hospital.
fn local_vector(
    t: &Table,
    fp: &FixedPoint,
    counts: &IntegerRange,
    rng: &mut StdRng,
) -> Result<Vec<u64>> {
    let rows = t.benign.len() as i64;
    let benign = t.benign.iter().filter(|b| **b).count() as i64;
    let mut v = counts.encode(&[rows, benign])?;
    let sums: Vec<f64> = t.columns.iter().map(|c| c.iter().sum()).collect();
    let squares: Vec<f64> = t.columns.iter().map(|c| c.iter().map(|x| x * x).sum()).collect();
    v.extend(fp.encode(&sums, rng));
    v.extend(fp.encode(&squares, rng));
    Ok(v)
}

struct Stats {
    rows: i64,
    benign: i64,
    mean: Vec<f64>,
    std: Vec<f64>,
}

fn stats(rows: i64, benign: i64, sums: &[f64], squares: &[f64]) -> Stats {
    let n = rows as f64;
    let mean: Vec<f64> = sums.iter().map(|s| s / n).collect();
    let std = squares
        .iter()
        .zip(&mean)
        .map(|(q, m)| ((q / n - m * m) * n / (n - 1.0)).max(0.0).sqrt())
        .collect();
    Stats { rows, benign, mean, std }
}

fn pooled(tables: &[&Table]) -> Stats {
    let rows: i64 = tables.iter().map(|t| t.benign.len() as i64).sum();
    let benign: i64 = tables.iter().map(|t| t.benign.iter().filter(|b| **b).count() as i64).sum();
    let sums: Vec<f64> =
        (0..COLUMNS.len()).map(|k| tables.iter().flat_map(|t| &t.columns[k]).sum()).collect();
    let squares: Vec<f64> = (0..COLUMNS.len())
        .map(|k| tables.iter().flat_map(|t| &t.columns[k]).map(|x| x * x).sum())
        .collect();
    stats(rows, benign, &sums, &squares)
}

fn print(title: &str, joint: &Stats, pool: &Stats) {
    println!("\n{title}");
    println!("  {:<18} {:>16} {:>16}", "", "secure (joint)", "pooled rows");
    println!("  {:<18} {:>16} {:>16}", "rows", joint.rows, pool.rows);
    println!("  {:<18} {:>16} {:>16}", "benign", joint.benign, pool.benign);
    for (k, c) in COLUMNS.iter().enumerate() {
        println!("  {:<18} {:>16.6} {:>16.6}", format!("mean {c}"), joint.mean[k], pool.mean[k]);
        println!("  {:<18} {:>16.6} {:>16.6}", format!("std {c}"), joint.std[k], pool.std[k]);
    }
}

pub(crate) fn run() -> Result<()> {
    let tables: Vec<Table> =
        HOSPITALS.iter().map(|(name, text)| parse(name, text)).collect::<Result<_>>()?;
    let consortium = Consortium::new(HOSPITALS.len(), 2026);
    let fp = FixedPoint::new(-1e9, 1e9, 24, HOSPITALS.len())?;
    let counts = IntegerRange::new(1 << 40, HOSPITALS.len())?;
    let width = 2 + 2 * COLUMNS.len();
    let mut rng = StdRng::from_entropy();
    let inputs: BTreeMap<PartyId, Vec<u64>> = consortium
        .parties()
        .into_iter()
        .zip(&tables)
        .map(|(p, t)| Ok((p, local_vector(t, &fp, &counts, &mut rng)?)))
        .collect::<Result<_>>()?;

    println!("veil demo: three hospitals, {} rows in all, compute joint statistics.", {
        tables.iter().map(|t| t.benign.len()).sum::<usize>()
    });
    println!(
        "Each hospital masks a vector of {width} sums; the coordinator sees only their total."
    );
    for (round, dropout) in [(1u8, None), (2u8, Some(PartyId(2)))] {
        let mut session = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rng, &mut session);
        let config = RoundConfig::all_pairs(SessionId(session), consortium.parties(), width);
        let mut sim = Simulation::new(&consortium, config, rand::RngCore::next_u64(&mut rng))?
            .inputs(inputs.clone());
        if let Some(p) = dropout {
            sim = sim.fault(Fault::Dropout { party: p, before: Stage::MaskedInput });
        }
        let outcome = sim.run();
        let aggregate = outcome.result.map_err(|e| anyhow::anyhow!("round {round} failed: {e}"))?;
        let n = aggregate.contributors.len();
        let c = counts.decode_sum(&aggregate.sum[..2]);
        let sums = fp.decode_sum(&aggregate.sum[2..2 + COLUMNS.len()], n)?;
        let squares = fp.decode_sum(&aggregate.sum[2 + COLUMNS.len()..], n)?;
        let joint = stats(c[0], c[1], &sums, &squares);
        let contributing: Vec<&Table> =
            aggregate.contributors.iter().map(|p| &tables[p.0 as usize]).collect();
        let pool = pooled(&contributing);
        let names: Vec<&str> =
            aggregate.contributors.iter().map(|p| HOSPITALS[p.0 as usize].0).collect();
        let title = match dropout {
            None => format!("Round {round}: all hospitals ({})", names.join(", ")),
            Some(p) => format!(
                "Round {round}: {} vanishes after sharing its keys; the sum is over {}",
                HOSPITALS[p.0 as usize].0,
                names.join(", ")
            ),
        };
        print(&title, &joint, &pool);
        if joint.rows != pool.rows || joint.benign != pool.benign {
            bail!("the secure counts differ from the pooled counts");
        }
        for ((column, j), p) in COLUMNS.iter().zip(&joint.mean).zip(&pool.mean) {
            if (j - p).abs() > 1e-6 * p.abs().max(1.0) {
                bail!("the secure mean of {column} differs from the pooled mean");
            }
        }
    }
    println!(
        "\nCounts match exactly; means and deviations agree to fixed-point precision (2^-24)."
    );
    Ok(())
}
