//! Every CASTLE attention path (naive, chunked, fused kernel, UQ-KV cache) against the slow reference of
//! docs/castle.md, section 1 in float64, on random inputs at awkward sizes, plus causality.
//!
//! Float64 and float32 `NdArray` tests live in separate test binaries: burn fixes a device's
//! default float type at its first tensor, per process, and both share `NdArrayDevice`.

use crate::common;

use burn::backend::ndarray::NdArray;
use common::{check_against_reference, run_path, Path, RawHeads};

#[test]
fn all_paths_match_reference_in_f64() {
    check_against_reference::<NdArray<f64>>(1e-10, 2, 2, 8);
}

#[test]
fn no_path_lets_a_later_token_change_an_earlier_output() {
    let (l, d) = (23, 8);
    for window in [None, Some(4)] {
        for path in [
            Path::Naive,
            Path::Chunked(5),
            Path::Chunked(64),
            Path::Cached(9),
            Path::Fused(5),
            Path::Fused(64),
        ] {
            for t in [0, 8, 15, 21] {
                let x = RawHeads::random([1, 2, l, d], 7);
                let mut changed = x.clone();
                // Change every input at positions after t.
                for (field, seed) in changed.fields_mut().into_iter().zip(100..) {
                    let fresh = common::random_vec(&mut common::rng(seed), field.len(), 1.5);
                    for bh in 0..2 {
                        for pos in t + 1..l {
                            let r = (bh * l + pos) * d..(bh * l + pos + 1) * d;
                            field[r.clone()].copy_from_slice(&fresh[r]);
                        }
                    }
                }
                let before = run_path::<NdArray<f64>>(&x, window, path);
                let after = run_path::<NdArray<f64>>(&changed, window, path);
                let prefix = |v: &[f64]| -> Vec<f64> {
                    (0..2)
                        .flat_map(|bh| v[bh * l * d..(bh * l + t + 1) * d].to_vec())
                        .collect()
                };
                assert_eq!(
                    prefix(&before),
                    prefix(&after),
                    "{path:?} window={window:?}: output at or before t={t} changed"
                );
                assert_ne!(before, after, "the change must be visible after t");
            }
        }
    }
}
