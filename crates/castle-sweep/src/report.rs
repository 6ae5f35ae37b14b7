//! The sweep's results: `results.csv`, `results.md` and the plots, from finished cells.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use castle_train::checkpoint::write_atomic;
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

pub fn csv(results: &[CellResult]) -> String {
    let mut s = String::from("size,kind,seed,params,non_embedding_params,tokens,final_val_loss,final_val_ppl,best_val_loss,best_val_ppl,tokens_per_s\n");
    for r in results {
        let m = &r.summary;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.5},{:.4},{:.5},{:.4},{:.1}",
            r.size,
            r.kind,
            r.seed,
            m.parameters,
            m.non_embedding_parameters,
            m.tokens,
            m.final_val_loss,
            m.final_val_ppl,
            m.best_val_loss,
            m.best_val_ppl,
            r.tokens_per_s
        );
    }
    s
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

pub fn markdown(results: &[CellResult]) -> String {
    let mut s = String::from(
        "| size | kind | seed | params | non-emb. | tokens | final val loss | final val ppl | best val ppl | tokens/s |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let m = &r.summary;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.4} | {:.2} | {:.2} | {:.0} |",
            r.size,
            r.kind,
            r.seed,
            m.parameters,
            m.non_embedding_parameters,
            m.tokens,
            m.final_val_loss,
            m.final_val_ppl,
            m.best_val_ppl,
            r.tokens_per_s
        );
    }
    let sizes = first_seen(results.iter().map(|r| r.size.as_str()));
    s.push_str(
        "\nPer size: mean final validation loss over seeds (spread = max - min between seeds).\n\n",
    );
    for size in sizes {
        let mut kinds = by_kind(results, size);
        kinds.sort_by(|a, b| a.1.total_cmp(&b.1));
        let cells: Vec<String> = kinds
            .iter()
            .map(|(k, mean, spread, n)| format!("{k} {mean:.4} (spread {spread:.4}, {n} seeds)"))
            .collect();
        let _ = write!(s, "- **{size}**: {}", cells.join("; "));
        if kinds.len() >= 2 {
            let margin = kinds[1].1 - kinds[0].1;
            let spread = kinds.iter().map(|k| k.2).fold(0.0, f64::max);
            let verdict = if margin > spread {
                "larger than the seed spread"
            } else {
                "within the seed spread: not a clear win"
            };
            let _ = write!(
                s,
                ". Lowest: {} by {margin:.4} over {} ({verdict}, max spread {spread:.4})",
                kinds[0].0, kinds[1].0
            );
        }
        if let Some(base) = kinds.iter().find(|k| k.0 == "baseline") {
            for k in kinds.iter().filter(|k| k.0 != "baseline") {
                let diff = k.1 - base.1;
                let spread = k.2.max(base.2);
                let verdict = if diff.abs() > spread {
                    "beyond"
                } else {
                    "within"
                };
                let _ = write!(
                    s,
                    "; {} - baseline = {diff:+.4} ({verdict} the seed spread {spread:.4})",
                    k.0
                );
            }
        }
        s.push('\n');
    }
    s
}

/// Rewrites the whole report in `dir`.
pub fn write(dir: &Path, results: &[CellResult]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomic(&dir.join("results.csv"), csv(results).as_bytes())?;
    write_atomic(&dir.join("results.md"), markdown(results).as_bytes())?;
    write_atomic(
        &dir.join("curves.svg"),
        crate::plots::curves(results)?.as_bytes(),
    )?;
    write_atomic(
        &dir.join("scaling.svg"),
        crate::plots::scaling(results)?.as_bytes(),
    )?;
    Ok(())
}
