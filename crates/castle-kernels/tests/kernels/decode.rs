//! The decoding step on host memory (`castle_kernels::host::decode`) against the definitions, in
//! float64 to 1e-10 and float32 to 2e-5: CASTLE's UQ-KV cache (eq. 13 then eq. 5-8) after a
//! prompt of 0, 1 or half the positions, across the lookahead window and up to the cache's
//! capacity; the baseline's KV cache against causal softmax attention.

use crate::common;

use castle_kernels::host::decode::{CacheShape, CastleStep, KvRows, UqKvRows};
use castle_kernels::host::decode_layer::{decode_attention, LayerCache};
use castle_kernels::reference::in_lookahead;
use castle_kernels::rope::Rope;
use castle_kernels::AttentionOp;
use castle_kernels::Elem;
use common::{max_abs_diff, random_vec, reference_output, rng, RawHeads};

/// `[heads, n, d]` rows `range` of every head of `x` (batch 1), in `E`.
fn rows<E: Elem>(x: &[f64], [heads, l, d]: [usize; 3], range: std::ops::Range<usize>) -> Vec<E> {
    (0..heads)
        .flat_map(|h| x[(h * l + range.start) * d..(h * l + range.end) * d].iter())
        .map(|&v| E::of(v))
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The lookahead keys after a prompt of `p` positions, `[heads, p, d]`: eq. 3-4 at `t = p - 1`.
fn prompt_keys(x: &RawHeads, window: Option<usize>, p: usize) -> Vec<f64> {
    let [_, heads, l, d] = x.shape;
    let s = 1.0 / (d as f64).sqrt();
    let at = |v: &[f64], h: usize, i: usize| v[(h * l + i) * d..(h * l + i + 1) * d].to_vec();
    let mut u = vec![0.0; heads * p * d];
    for h in 0..heads {
        for i in 0..p {
            for j in (0..p).filter(|&j| in_lookahead(i, j, window)) {
                let w = 1.0 / (1.0 + (-s * dot(&at(&x.qu, h, i), &at(&x.ku, h, j))).exp());
                for (k, v) in at(&x.vu, h, j).iter().enumerate() {
                    u[(h * p + i) * d + k] += w * v;
                }
            }
        }
    }
    u
}

/// CASTLE's outputs at positions `p..l` (`[heads, l - p, d]`) from a cache filled with the
/// first `p`, decoded one position at a time.
fn castle_decode<E: Elem>(x: &RawHeads, window: Option<usize>, p: usize) -> Vec<f64> {
    let [_, heads, l, d] = x.shape;
    let dims = [heads, l, d];
    let mut cache = UqKvRows::<E>::new(
        CacheShape {
            heads,
            d,
            capacity: l,
        },
        window,
    );
    if p > 0 {
        let u: Vec<E> = rows(&prompt_keys(x, window, p), [heads, p, d], 0..p);
        let [qu, kc, vc] = [&x.qu, &x.kc, &x.vc].map(|f| rows::<E>(f, dims, 0..p));
        cache.prefill([&u, &qu, &kc, &vc], p);
    }
    let mut outputs = vec![vec![]; heads];
    for t in p..l {
        let at = |f: &[f64]| rows::<E>(f, dims, t..t + 1);
        let fields = [&x.qu, &x.ku, &x.vu, &x.qc, &x.kc, &x.vc, &x.qc_nope].map(|f| at(f));
        let [qu, ku, vu, qc, kc, vc, qc_nope] = &fields;
        let step = CastleStep {
            qu,
            ku,
            vu,
            qc,
            kc,
            vc,
            qc_nope,
        };
        let mut out = vec![E::zero(); heads * d];
        cache.step(&step, &mut out);
        for (h, o) in out.chunks(d).enumerate() {
            outputs[h].extend(o.iter().map(|v| v.to_f64().unwrap_or(f64::NAN)));
        }
    }
    assert_eq!(cache.len(), l);
    outputs.concat()
}

fn check_castle<E: Elem>(tolerance: f64) {
    let cases = [
        (1, None),
        (9, None),
        (9, Some(1)),
        (40, Some(5)),
        (70, None),
        (70, Some(32)),
    ];
    for (seed, (l, window)) in cases.into_iter().enumerate() {
        let (heads, d) = (3, 8);
        let x = RawHeads::random([1, heads, l, d], seed as u64);
        let want = reference_output(&x, window);
        for p in [0, 1, l / 2] {
            let want: Vec<f64> = (0..heads)
                .flat_map(|h| want[(h * l + p) * d..(h + 1) * l * d].to_vec())
                .collect();
            let err = max_abs_diff(&castle_decode::<E>(&x, window, p), &want);
            assert!(
                err < tolerance,
                "L={l} window={window:?} prompt {p}: max abs error {err:e}"
            );
        }
    }
}

#[test]
fn castle_step_matches_the_definition_in_f64() {
    check_castle::<f64>(1e-10);
}

#[test]
fn castle_step_in_f32_matches_the_f64_definition() {
    check_castle::<f32>(2e-5);
}

/// Heads long enough that a step runs its heads in parallel (`PARALLEL_WORK`).
#[test]
fn castle_step_runs_long_caches_in_parallel_with_the_same_result() {
    let (heads, l, d) = (4, 600, 32);
    let x = RawHeads::random([1, heads, l, d], 7);
    let want = reference_output(&x, Some(100));
    let p = l - 3;
    let want: Vec<f64> = (0..heads)
        .flat_map(|h| want[(h * l + p) * d..(h + 1) * l * d].to_vec())
        .collect();
    let err = max_abs_diff(&castle_decode::<f64>(&x, Some(100), p), &want);
    assert!(err < 1e-10, "max abs error {err:e}");
}

#[test]
fn kv_step_matches_causal_softmax_attention() {
    let (heads, l, d) = (2, 23, 8);
    let mut r = rng(3);
    let [q, k, v] = [0; 3].map(|_| random_vec(&mut r, heads * l * d, 1.5));
    let s = 1.0 / (d as f64).sqrt();
    let dims = [heads, l, d];
    for p in [0, 1, 11] {
        let mut cache = KvRows::<f64>::new(CacheShape {
            heads,
            d,
            capacity: l,
        });
        cache.extend(&rows(&k, dims, 0..p), &rows(&v, dims, 0..p), p);
        for t in p..l {
            let at = |f: &[f64]| rows::<f64>(f, dims, t..t + 1);
            let mut out = vec![0.0; heads * d];
            cache.step(&at(&q), &at(&k), &at(&v), &mut out);
            for h in 0..heads {
                fn row(f: &[f64], hl: usize, d: usize) -> &[f64] {
                    &f[hl * d..(hl + 1) * d]
                }
                let z: Vec<f64> = (0..=t)
                    .map(|j| s * dot(row(&q, h * l + t, d), row(&k, h * l + j, d)))
                    .collect();
                let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|z| (z - max).exp()).collect();
                let total: f64 = e.iter().sum();
                let want: Vec<f64> = (0..d)
                    .map(|c| {
                        (0..=t)
                            .map(|j| e[j] / total * row(&v, h * l + j, d)[c])
                            .sum()
                    })
                    .collect();
                let err = max_abs_diff(&out[h * d..(h + 1) * d], &want);
                assert!(err < 1e-12, "prompt {p}, position {t}, head {h}: {err:e}");
            }
        }
    }
}

/// A layer's attention for a batch of sequences long enough to run them in parallel gives each
/// the bits it gets alone, for both caches (RoPE at each sequence's own position).
#[test]
fn a_batch_of_long_caches_steps_as_each_alone() {
    let (heads, d, capacity) = (2, 16, 1200);
    let shape = CacheShape { heads, d, capacity };
    let rope = Rope::new(capacity, d, 10_000.0);
    let prompts = [700, 1, 900];
    for op in [
        AttentionOp::Causal,
        AttentionOp::Castle { window: Some(300) },
    ] {
        // The projection's parts: q, k, v or CASTLE's six.
        let parts = if op == AttentionOp::Causal { 3 } else { 6 };
        let mut r = rng(9);
        let mut filled = |n: usize| {
            let mut cache = LayerCache::<f64>::new(op, shape);
            let f = |r: &mut _| random_vec(r, heads * n * d, 1.0);
            match &mut cache {
                LayerCache::Kv(c) => c.extend(&f(&mut r), &f(&mut r), n),
                LayerCache::UqKv(c) => {
                    let [u, qu, kc, vc] = [0; 4].map(|_| f(&mut r));
                    c.prefill([&u, &qu, &kc, &vc], n);
                }
            }
            cache
        };
        let caches: Vec<LayerCache<f64>> = prompts.iter().map(|&n| filled(n)).collect();
        let y = random_vec(&mut r, prompts.len() * parts * heads * d, 1.0);
        let row = parts * heads * d;
        let mut rot = vec![0.0; prompts.len() * 4 * heads * d];
        let mut batched = caches.clone();
        let mut seqs: Vec<&mut [LayerCache<f64>]> =
            batched.iter_mut().map(std::slice::from_mut).collect();
        let mut out = vec![0.0; prompts.len() * heads * d];
        decode_attention(&mut seqs, 0, &y, &rope, &mut rot, &mut out);
        for (i, cache) in caches.into_iter().enumerate() {
            let mut alone = [cache];
            let mut one = vec![0.0; heads * d];
            let y = &y[i * row..(i + 1) * row];
            decode_attention(&mut [&mut alone[..]], 0, y, &rope, &mut rot, &mut one);
            assert_eq!(
                one,
                out[i * heads * d..(i + 1) * heads * d],
                "{op:?}, sequence {i}"
            );
            assert_eq!(alone[0].len(), prompts[i] + 1);
        }
    }
}

#[test]
#[should_panic(expected = "3 positions exceed the cache's 2")]
fn a_step_past_the_capacity_is_refused() {
    let mut cache = KvRows::<f64>::new(CacheShape {
        heads: 1,
        d: 2,
        capacity: 2,
    });
    cache.extend(&[0.0; 4], &[0.0; 4], 2);
    cache.step(&[0.0; 2], &[0.0; 2], &[0.0; 2], &mut [0.0; 2]);
}
