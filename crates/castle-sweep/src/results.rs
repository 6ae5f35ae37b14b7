//! The sweep's results, read from the finished cells' run directories, and the statistics the
//! report and the plots share.

use anyhow::{Context, Result};
use castle_train::metrics::{read_metrics, summary_path, Summary};

use crate::Cell;

#[derive(Debug, Clone)]
pub struct CellResult {
    pub size: String,
    pub kind: String,
    pub seed: u64,
    pub summary: Summary,
    /// Mean training throughput over the logged steps.
    pub tokens_per_s: f64,
    /// (tokens, validation loss) at every validation step.
    pub curve: Vec<(u64, f64)>,
}

/// Results of the finished cells, in grid order.
pub fn collect(cells: &[Cell]) -> Result<Vec<CellResult>> {
    let mut out = vec![];
    for cell in cells.iter().filter(|c| c.is_finished()) {
        let dir = &cell.config.run.dir;
        let path = summary_path(dir);
        let summary: Summary = serde_json::from_slice(&std::fs::read(&path)?)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        let metrics = read_metrics(&dir.join("metrics.jsonl"))?;
        let speeds: Vec<f64> = metrics.iter().map(|m| m.tokens_per_s).collect();
        out.push(CellResult {
            size: cell.size.clone(),
            kind: cell.kind.to_string(),
            seed: cell.seed,
            summary,
            tokens_per_s: speeds.iter().sum::<f64>() / speeds.len().max(1) as f64,
            curve: metrics
                .iter()
                .filter_map(|m| m.val_loss.map(|v| (m.tokens, v)))
                .collect(),
        });
    }
    Ok(out)
}

/// Distinct values in order of first appearance.
pub fn first_seen<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = vec![];
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Mean and spread (max - min) of the final validation loss over seeds, per (size, kind).
pub fn by_kind(results: &[CellResult], size: &str) -> Vec<(String, f64, f64, usize)> {
    first_seen(
        results
            .iter()
            .filter(|r| r.size == size)
            .map(|r| r.kind.as_str()),
    )
    .into_iter()
    .map(|kind| {
        let losses: Vec<f64> = results
            .iter()
            .filter(|r| r.size == size && r.kind == kind)
            .map(|r| r.summary.final_val_loss)
            .collect();
        let mean = losses.iter().sum::<f64>() / losses.len() as f64;
        let spread = losses.iter().cloned().fold(f64::MIN, f64::max)
            - losses.iter().cloned().fold(f64::MAX, f64::min);
        (kind.to_string(), mean, spread, losses.len())
    })
    .collect()
}

/// `kind`'s final validation loss minus the baseline's, seed by seed (the seeds both finished).
pub fn paired_with_baseline(results: &[CellResult], size: &str, kind: &str) -> Vec<(u64, f64)> {
    let loss = |kind: &str, seed: u64| {
        results
            .iter()
            .find(|r| r.size == size && r.kind == kind && r.seed == seed)
            .map(|r| r.summary.final_val_loss)
    };
    results
        .iter()
        .filter(|r| r.size == size && r.kind == kind)
        .filter_map(|r| Some((r.seed, r.summary.final_val_loss - loss("baseline", r.seed)?)))
        .collect()
}
