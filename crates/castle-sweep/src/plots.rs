//! SVG plots with `plotters`: validation loss against tokens, final loss against parameters.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::results::{by_kind, CellResult};

const KINDS: [(&str, RGBColor); 3] = [
    ("baseline", RGBColor(31, 119, 180)),
    ("castle", RGBColor(214, 39, 40)),
    ("castle-swl", RGBColor(44, 160, 44)),
];

fn color(kind: &str) -> RGBColor {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(BLACK, |(_, c)| *c)
}

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().fold(f64::MAX, f64::min);
    let hi = values.fold(f64::MIN, f64::max);
    if lo > hi {
        (0.0, 1.0)
    } else {
        let pad = ((hi - lo) * 0.05).max(1e-3);
        (lo - pad, hi + pad)
    }
}

/// Validation loss against tokens for every cell, coloured by attention kind.
pub fn curves(results: &[CellResult]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let points = results.iter().flat_map(|r| r.curve.iter());
        let max_tokens = points.clone().map(|p| p.0).max().unwrap_or(1) as f64;
        let (lo, hi) = range(points.map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption("validation loss against tokens", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_tokens * 1.02, lo..hi)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("tokens")
            .y_desc("validation loss")
            .x_label_formatter(&|t| format!("{:.0}k", t / 1e3))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for r in results {
            let c = color(&r.kind);
            chart
                .draw_series(LineSeries::new(
                    r.curve.iter().map(|&(t, v)| (t as f64, v)),
                    c.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label(format!("{}-{}-s{}", r.size, r.kind, r.seed))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(svg)
}

/// Mean final validation loss over seeds against non-embedding parameters, one line per kind.
pub fn scaling(results: &[CellResult]) -> Result<String> {
    let mut sizes: Vec<(String, f64)> = vec![];
    for r in results {
        if !sizes.iter().any(|(s, _)| *s == r.size) {
            sizes.push((r.size.clone(), r.summary.non_embedding_parameters as f64));
        }
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (x_lo, x_hi) = range(sizes.iter().map(|s| s.1));
        let (lo, hi) = range(results.iter().map(|r| r.summary.final_val_loss));
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "final validation loss against non-embedding parameters",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_lo.max(1.0) * 0.8..x_hi * 1.25).log_scale(), lo..hi)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("non-embedding parameters")
            .x_labels(6)
            .x_label_formatter(&|p| format!("{:.1}M", p / 1e6))
            .y_desc("final validation loss (mean over seeds)")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (kind, c) in KINDS {
            let line: Vec<(f64, f64)> = sizes
                .iter()
                .filter_map(|(size, params)| {
                    by_kind(results, size)
                        .into_iter()
                        .find(|k| k.0 == kind)
                        .map(|k| (*params, k.1))
                })
                .collect();
            if line.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(kind)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(svg)
}
