//! The decoding caches' growable row buffer against a plain `Vec` of rows.

use burn::backend::ndarray::NdArray;
use burn::prelude::*;
use burn::tensor::Distribution;
use castle_model::attention::cache::CacheRows;

type B = NdArray<f64>;

fn rows_of(t: Tensor<B, 4>) -> Vec<f64> {
    t.into_data().to_vec::<f64>().unwrap()
}

/// `[b, h, len, d]` as row-major values, built from per-position rows `[b, h, 1, d]`.
fn concat(rows: &[Tensor<B, 4>]) -> Vec<f64> {
    rows_of(Tensor::cat(rows.to_vec(), 2))
}

#[test]
fn appends_match_a_vec_of_rows() {
    let device = Default::default();
    let (b, h, d) = (2, 3, 5);
    let random = |n: usize| Tensor::<B, 4>::random([b, h, n, d], Distribution::Default, &device);
    let first = random(3);
    let mut cache = CacheRows::new(first.clone());
    let mut reference: Vec<Tensor<B, 4>> = (0..3)
        .map(|i| first.clone().slice([0..b, 0..h, i..i + 1, 0..d]))
        .collect();
    // 3 -> 40 rows: several doublings, single rows and a block of 4 at once.
    for step in 0..20 {
        let n = if step % 5 == 4 { 4 } else { 1 };
        let new = random(n);
        cache.push(new.clone());
        reference.extend((0..n).map(|i| new.clone().slice([0..b, 0..h, i..i + 1, 0..d])));
        let len = reference.len();
        assert_eq!(cache.len(), reference.len());
        assert_eq!(rows_of(cache.rows()), concat(&reference));
        assert_eq!(
            rows_of(cache.rows_in(1..len - 1)),
            concat(&reference[1..len - 1])
        );
    }
}
