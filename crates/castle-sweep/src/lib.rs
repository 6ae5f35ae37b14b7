//! castle-sweep: a grid of sizes x attention kinds x seeds from one sweep file, one run
//! directory per cell, all at the same token budget within a size. Finished cells (those with a
//! `summary.json`) are skipped and unfinished ones resume, so a sweep can be stopped and
//! restarted. After every cell the report is rewritten: `results.md`, `results.csv`,
//! `curves.svg` (validation loss against tokens) and `scaling.svg` (final validation loss
//! against non-embedding parameters, per kind).

pub mod plots;
pub mod report;
pub mod results;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use castle_model::AttentionKind;
use castle_train::RunConfig;
use serde::Deserialize;

/// A sweep file (`configs/sweeps/*.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// The run config every cell starts from.
    pub base: PathBuf,
    /// Where the cells' run directories and the report go.
    pub dir: PathBuf,
    pub kinds: Vec<AttentionKind>,
    pub seeds: Vec<u64>,
    /// CASTLE-SWL's lookahead window.
    #[serde(default)]
    pub window: Option<usize>,
    /// `key=value` overrides applied to every cell.
    #[serde(default)]
    pub set: Vec<String>,
    pub sizes: Vec<Size>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Size {
    pub name: String,
    /// `key=value` overrides for this size (shape and token budget).
    pub set: Vec<String>,
    /// CASTLE-SWL's window at this size, if not the sweep's.
    #[serde(default)]
    pub window: Option<usize>,
}

/// One run of the grid.
#[derive(Debug, Clone)]
pub struct Cell {
    pub size: String,
    pub kind: AttentionKind,
    pub seed: u64,
    pub config: RunConfig,
}

impl Cell {
    pub fn name(&self) -> String {
        format!("{}-{}-s{}", self.size, self.kind, self.seed)
    }

    pub fn is_finished(&self) -> bool {
        self.config.run.dir.join("summary.json").exists()
    }
}

impl Sweep {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sweep file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid sweep file {}", path.display()))
    }

    /// Every cell's resolved, validated config, in run order (size, then seed, then kind).
    pub fn cells(&self, extra: &[String]) -> Result<Vec<Cell>> {
        let mut cells = vec![];
        for size in &self.sizes {
            for &seed in &self.seeds {
                for &kind in &self.kinds {
                    let name = format!("{}-{kind}-s{seed}", size.name);
                    let mut overrides: Vec<String> =
                        self.set.iter().chain(&size.set).cloned().collect();
                    overrides.push(format!("model.attention=\"{kind}\""));
                    overrides.push(format!("run.seed={seed}"));
                    overrides.push(format!("run.dir=\"{}\"", self.dir.join(&name).display()));
                    if kind == AttentionKind::CastleSwl {
                        let w = size
                            .window
                            .or(self.window)
                            .context("castle-swl cells need `window` in the sweep file")?;
                        overrides.push(format!("model.window={w}"));
                    }
                    overrides.extend(extra.iter().cloned());
                    let config = RunConfig::load(&self.base, &overrides)
                        .with_context(|| format!("cell {name}"))?;
                    cells.push(Cell {
                        size: size.name.clone(),
                        kind,
                        seed,
                        config,
                    });
                }
            }
        }
        Ok(cells)
    }
}
