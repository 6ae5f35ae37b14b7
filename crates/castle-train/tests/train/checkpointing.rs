//! `backend.checkpointing = "balanced"` (burn's `BalancedCheckpointing`) on `configs/tiny.toml`
//! (CPU, `flex`): it recomputes instead of storing, so the run follows the same loss curve to
//! the same parameters, and a run may resume under the other setting.

use crate::common;

use common::runs::{assert_same_curve, assert_same_params, assert_success, copy_dir, metrics};
use common::{castle_train, tiny_args, with, write_corpus};

#[test]
fn balanced_checkpointing_trains_the_same_curve_to_the_same_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    for attention in ["castle", "baseline"] {
        let run = |name: &str, checkpointing: &str| {
            let args = with(
                tiny_args(tmp.path(), name),
                &[
                    &format!("model.attention=\"{attention}\""),
                    &format!("backend.checkpointing=\"{checkpointing}\""),
                ],
            );
            assert_success(&castle_train(&args));
            tmp.path().join(name)
        };
        let none = run(&format!("{attention}-none"), "none");
        let balanced = run(&format!("{attention}-balanced"), "balanced");
        assert_same_curve(&metrics(&none), &metrics(&balanced));
        assert_same_params(&none, &balanced);
    }
}

#[test]
fn a_run_resumes_under_the_other_checkpointing_setting_on_the_same_curve() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    let keep_all = |run| with(tiny_args(tmp.path(), run), &["checkpoint.keep_last=20"]);
    assert_success(&castle_train(&keep_all("none")));
    // The same run stopped after step 6, resumed with balanced checkpointing.
    let (none, resumed) = (tmp.path().join("none"), tmp.path().join("resumed"));
    for step in [2, 4, 6] {
        let name = format!("checkpoints/step-{step:07}");
        copy_dir(&none.join(&name), &resumed.join(&name));
    }
    std::fs::copy(none.join("metrics.jsonl"), resumed.join("metrics.jsonl")).unwrap();
    let out = castle_train(&with(
        keep_all("resumed"),
        &["backend.checkpointing=\"balanced\""],
    ));
    assert_success(&out);
    assert_eq!(
        metrics(&resumed)[6].step,
        7,
        "steps 7.. trained after resuming"
    );
    assert_same_curve(&metrics(&none), &metrics(&resumed));
    assert_same_params(&none, &resumed);
}
