//! Data parallelism through burn-collective on `configs/tiny.toml` (CPU, `flex`): two ranks in
//! one process and two processes on localhost reproduce the single-device run step by step and
//! end with the same parameters; a SIGKILLed two-rank run resumes exactly; a single-device
//! checkpoint resumes on two ranks on the same loss curve; a node that never joins, or dies,
//! stops the run with an error in bounded time.

use crate::common;

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use castle_train::checkpoint;
use castle_train::metrics::read_metrics;
use common::runs::{assert_same_curve, assert_same_params, assert_success, copy_dir, metrics};
use common::{castle_train, kill_after_logged_steps, tiny_args, with, write_corpus};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts castle-train with the log a user sees by default (info).
fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_castle-train"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` at most `limit`, killing it past that.
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!(
                "castle-train ran past {limit:?}: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The flags of node `rank` of a two-node run on localhost.
fn node_flags(rank: usize, master: u16, node_port: u16, timeout_s: u64) -> Vec<String> {
    [
        "--nnodes",
        "2",
        "--node-rank",
        &rank.to_string(),
        "--master-addr",
        &format!("127.0.0.1:{master}"),
        "--node-addr",
        &format!("127.0.0.1:{node_port}"),
        "--peer-timeout-s",
        &timeout_s.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn plus(mut args: Vec<String>, extra: &[String]) -> Vec<String> {
    args.extend_from_slice(extra);
    args
}

#[test]
fn two_ranks_in_one_process_reproduce_the_single_device_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    assert_success(&castle_train(&tiny_args(tmp.path(), "single")));
    let two = plus(
        tiny_args(tmp.path(), "two"),
        &["--devices".into(), "2".into()],
    );
    let out = castle_train(&two);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("validation perplexity:"));
    let (a, b) = (tmp.path().join("single"), tmp.path().join("two"));
    assert_same_curve(&metrics(&a), &metrics(&b));
    assert_same_params(&a, &b);
    assert!(b.join("summary.json").exists());
}

#[test]
fn two_nodes_on_localhost_reproduce_the_single_device_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    assert_success(&castle_train(&tiny_args(tmp.path(), "single")));
    let args = tiny_args(tmp.path(), "nodes");
    let master = free_port();
    let nodes: Vec<Child> = (0..2)
        .map(|rank| {
            spawn(&plus(
                args.clone(),
                &node_flags(rank, master, free_port(), 60),
            ))
        })
        .collect();
    for node in nodes {
        assert_success(&wait_bounded(node, Duration::from_secs(180)));
    }
    let (a, b) = (tmp.path().join("single"), tmp.path().join("nodes"));
    assert_same_curve(&metrics(&a), &metrics(&b));
    assert_same_params(&a, &b);
}

#[test]
fn two_rank_run_killed_by_sigkill_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    assert_success(&castle_train(&tiny_args(tmp.path(), "straight")));
    let args = plus(
        tiny_args(tmp.path(), "interrupted"),
        &["--devices".into(), "2".into()],
    );
    let interrupted = tmp.path().join("interrupted");
    kill_after_logged_steps(spawn(&args), &interrupted, 7);
    assert_success(&castle_train(&args));
    assert_same_curve(
        &metrics(&tmp.path().join("straight")),
        &metrics(&interrupted),
    );
}

#[test]
fn single_device_checkpoint_resumes_on_two_ranks_on_the_same_curve() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    let keep_all = |run| with(tiny_args(tmp.path(), run), &["checkpoint.keep_last=20"]);
    assert_success(&castle_train(&keep_all("single")));
    // The same run stopped after step 6: its later checkpoints removed.
    let (single, moved) = (tmp.path().join("single"), tmp.path().join("moved"));
    std::fs::create_dir_all(moved.join("checkpoints")).unwrap();
    for step in [2, 4, 6] {
        let name = format!("checkpoints/step-{step:07}");
        copy_dir(&single.join(&name), &moved.join(&name));
    }
    std::fs::copy(single.join("metrics.jsonl"), moved.join("metrics.jsonl")).unwrap();
    assert_success(&castle_train(&plus(
        keep_all("moved"),
        &["--devices".into(), "2".into()],
    )));
    assert_eq!(metrics(&moved)[6].step, 7, "steps 7.. trained on two ranks");
    assert_same_curve(&metrics(&single), &metrics(&moved));
    assert_same_params(&single, &moved);
}

#[test]
fn a_node_that_never_joins_stops_the_run_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    let started = Instant::now();
    let node0 = spawn(&plus(
        tiny_args(tmp.path(), "run"),
        &node_flags(0, free_port(), free_port(), 3),
    ));
    let out = wait_bounded(node0, Duration::from_secs(60));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not every node joined within 3 s"),
        "{stderr}"
    );
    assert!(stderr.contains("--nnodes"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_node_killed_mid_run_stops_the_other_with_an_error_and_a_valid_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    let args = with(tiny_args(tmp.path(), "run"), &["train.steps=400"]);
    let master = free_port();
    let node0 = spawn(&plus(args.clone(), &node_flags(0, master, free_port(), 5)));
    let mut node1 = spawn(&plus(args.clone(), &node_flags(1, master, free_port(), 5)));
    let run = tmp.path().join("run");
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_metrics(&run.join("metrics.jsonl")).map_or(0, |m| m.len()) < 5 {
        assert!(Instant::now() < deadline, "the run never reached step 5");
        std::thread::sleep(Duration::from_millis(20));
    }
    node1.kill().unwrap(); // SIGKILL
    node1.wait().unwrap();
    let out = wait_bounded(node0, Duration::from_secs(60));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a peer died or a node never joined") || stderr.contains("burn-collective"),
        "{stderr}"
    );
    // One clear error: no thread panics; burn-collective's settings in words, not a Debug dump.
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("CollectiveConfig"), "{stderr}");
    assert!(
        stderr.contains("joining: 2 ranks (1 per node x 2 nodes)"),
        "{stderr}"
    );
    // The last checkpoint loads: the run resumes from it on one process with two ranks.
    let last = checkpoint::list(&run).unwrap().pop().expect("a checkpoint");
    let step = checkpoint::read(&last).unwrap().state.step;
    let resumed = castle_train(&plus(
        with(
            tiny_args(tmp.path(), "run"),
            &[&format!("train.steps={}", step + 2)],
        ),
        &["--devices".into(), "2".into()],
    ));
    assert_success(&resumed);
}
