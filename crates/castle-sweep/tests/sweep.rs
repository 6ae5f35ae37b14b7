//! A two-kind, two-seed sweep of `configs/tiny.toml` on a synthetic corpus: every cell runs, the
//! report is written, and a restart skips finished cells and finishes an unfinished one.

use std::path::Path;
use std::process::Command;

fn write_corpus(dir: &Path) {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let words = [
        "the", "state", "of", "union", "is", "strong", "and", "free", "we", "shall",
    ];
    for d in 0..20 {
        let text: Vec<&str> = (0..600)
            .map(|i| words[(i * 7 + d * 3 + i / 5) % words.len()])
            .collect();
        std::fs::write(corpus.join(format!("doc-{d:02}.txt")), text.join(" ")).unwrap();
    }
}

fn sweep(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_castle-sweep"))
        .args(["--sweep", &file.display().to_string()])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

#[test]
fn sweep_runs_reports_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path());
    let dir = tmp.path().join("sweep");
    let file = tmp.path().join("sweep.toml");
    std::fs::write(
        &file,
        format!(
            r#"base = "configs/tiny.toml"
dir = "{dir}"
kinds = ["baseline", "castle"]
seeds = [1, 2]
set = ['data.source="{src}"', 'data.dir="{prep}"', "train.steps=8", "eval.every=4", "checkpoint.every=4"]

[[sizes]]
name = "a"
set = ["model.d_model=32"]

[[sizes]]
name = "b"
set = ["model.d_model=48", "model.heads=6"]
"#,
            dir = dir.display(),
            src = tmp.path().join("corpus").display(),
            prep = tmp.path().join("prepared").display(),
        ),
    )
    .unwrap();
    let out = sweep(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 8, "{csv}");
    assert!(
        csv.lines().nth(1).unwrap().starts_with("a,baseline,1,"),
        "{csv}"
    );
    assert!(csv.starts_with("size,") && csv.lines().next().unwrap().ends_with(",wall_time_s"));
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert!(md.contains("- **b**:") && md.contains("Lowest:"), "{md}");
    // The paired difference, seed by seed, from the csv's final validation losses.
    let loss = |cell: &str| -> f64 {
        let row = csv.lines().find(|l| l.starts_with(cell)).unwrap();
        row.split(',').nth(6).unwrap().parse().unwrap()
    };
    let line_b = md.lines().find(|l| l.starts_with("- **b**:")).unwrap();
    let (_, by_seed) = line_b.split_once("seed by seed ").expect(line_b);
    for seed in [1, 2] {
        let d = loss(&format!("b,castle,{seed},")) - loss(&format!("b,baseline,{seed},"));
        let (_, rest) = by_seed.split_once(&format!("s{seed} ")).expect(by_seed);
        let shown: f64 = rest.split([',', ' ']).next().unwrap().parse().unwrap();
        assert!(
            (shown - d).abs() < 2e-4,
            "s{seed}: {shown} shown, {d} from the csv"
        );
    }
    assert!(by_seed.contains(" of 2)"), "{line_b}");
    for svg in ["curves.svg", "scaling.svg"] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(text.contains("<svg") && text.contains("castle"), "{svg}");
    }

    // Restart: an unfinished cell (summary removed, checkpoints kept) is finished, the rest skipped.
    std::fs::remove_file(dir.join("b-castle-s2/summary.json")).unwrap();
    let before = std::fs::read(dir.join("a-castle-s1/metrics.jsonl")).unwrap();
    let out = sweep(&file);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("finished, skipped").count(), 7, "{stderr}");
    assert!(dir.join("b-castle-s2/summary.json").exists());
    assert_eq!(
        before,
        std::fs::read(dir.join("a-castle-s1/metrics.jsonl")).unwrap()
    );
}

#[test]
fn shipped_sweeps_resolve_to_valid_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::set_current_dir(&root).unwrap();
    let cpu = ["backend.kind=\"ndarray\"".to_string()];
    let ladder = castle_sweep::Sweep::load(Path::new("configs/sweeps/cpu-ladder.toml")).unwrap();
    assert_eq!(ladder.cells(&[]).unwrap().len(), 18);
    let paper = castle_sweep::Sweep::load(Path::new("configs/sweeps/paper.toml")).unwrap();
    let cells = paper.cells(&cpu).unwrap();
    assert_eq!(cells.len(), 12);
    let s_swl = cells
        .iter()
        .find(|c| c.name() == "S-castle-swl-s0")
        .unwrap();
    assert_eq!(s_swl.config.model.window, Some(128));
    let xl = cells.iter().find(|c| c.name() == "XL-castle-s0").unwrap();
    assert_eq!((xl.config.model.n_heads(), xl.config.train.lr), (9, 2e-4));
}
