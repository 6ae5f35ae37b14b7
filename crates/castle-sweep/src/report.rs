//! The sweep's report: `results.csv`, `results.md` and the plots, rewritten from the finished cells.

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;
use castle_train::checkpoint::write_atomic;

use crate::results::{by_kind, first_seen, paired_with_baseline, CellResult};

pub fn csv(results: &[CellResult]) -> String {
    let mut s = String::from("size,kind,seed,params,non_embedding_params,tokens,final_val_loss,final_val_ppl,best_val_loss,best_val_ppl,tokens_per_s,wall_time_s\n");
    for r in results {
        let m = &r.summary;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.5},{:.4},{:.5},{:.4},{:.1},{:.1}",
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
            r.tokens_per_s,
            m.wall_time_s
        );
    }
    s
}

pub fn markdown(results: &[CellResult]) -> String {
    let mut s = String::from(
        "| size | kind | seed | params | non-emb. | tokens | final val loss | final val ppl | best val ppl | tokens/s | wall time |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let m = &r.summary;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.4} | {:.2} | {:.2} | {:.0} | {:.1} min |",
            r.size,
            r.kind,
            r.seed,
            m.parameters,
            m.non_embedding_parameters,
            m.tokens,
            m.final_val_loss,
            m.final_val_ppl,
            m.best_val_ppl,
            r.tokens_per_s,
            m.wall_time_s / 60.0
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
                let paired = paired_with_baseline(results, size, &k.0);
                if !paired.is_empty() {
                    let by_seed: Vec<String> = paired
                        .iter()
                        .map(|(seed, d)| format!("s{seed} {d:+.4}"))
                        .collect();
                    let lower = paired.iter().filter(|(_, d)| *d < 0.0).count();
                    let _ = write!(
                        s,
                        ", seed by seed {} (lower in {lower} of {})",
                        by_seed.join(", "),
                        paired.len()
                    );
                }
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
