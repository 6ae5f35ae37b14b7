//! `metrics.jsonl` (one JSON object per logged step) and `summary.json`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub tokens: u64,
    pub train_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
}

/// Written once at the end of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub attention: String,
    pub parameters: usize,
    pub non_embedding_parameters: usize,
    pub steps: usize,
    pub tokens: u64,
    pub wall_time_s: f64,
    pub final_val_loss: f64,
    pub final_val_ppl: f64,
    pub best_val_loss: f64,
    pub best_val_ppl: f64,
}

pub struct MetricsLog {
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping lines after `last_step`: a run killed after
    /// its last checkpoint logged steps that the resumed run will log again.
    pub fn open(path: &Path, last_step: usize) -> Result<Self> {
        if path.exists() {
            let kept: String = read_metrics(path)?
                .into_iter()
                .filter(|m| m.step <= last_step)
                // Numbers and options only (serde_json writes a NaN as null): never fails.
                .map(|m| serde_json::to_string(&m).expect("metrics serialize") + "\n")
                .collect();
            write_atomic(path, kept.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { file })
    }

    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(m)? + "\n";
        self.file
            .write_all(line.as_bytes())
            .context("writing metrics.jsonl")?;
        self.file.flush()?;
        Ok(())
    }
}

/// Every complete line of a `metrics.jsonl` (a line cut short by a crash is skipped).
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = vec![];
    for line in BufReader::new(file).lines() {
        if let Ok(m) = serde_json::from_str(&line?) {
            out.push(m);
        }
    }
    Ok(out)
}

pub fn metrics_path(run_dir: &Path) -> PathBuf {
    run_dir.join("metrics.jsonl")
}

pub fn summary_path(run_dir: &Path) -> PathBuf {
    run_dir.join("summary.json")
}
