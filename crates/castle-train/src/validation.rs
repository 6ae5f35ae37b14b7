//! Validation loss: token-weighted mean negative log-likelihood over fixed windows.

use burn::prelude::*;
use castle_model::{CastleLm, KernelBackend};

/// `[batch, seq_len + 1]` token windows as (inputs, targets), each `[batch, seq_len]`.
pub fn inputs_and_targets<B: Backend>(
    tokens: &[u32],
    batch: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let width = tokens.len() / batch;
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let all = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, width]), device);
    (
        all.clone().slice([0..batch, 0..width - 1]),
        all.slice([0..batch, 1..width]),
    )
}

/// Mean loss over every target token of `windows` (each `seq_len + 1` tokens), `batch_size`
/// windows per forward pass.
pub fn mean_loss<B: KernelBackend>(
    model: &CastleLm<B>,
    windows: &[Vec<u32>],
    batch_size: usize,
    device: &B::Device,
) -> f64 {
    let (mut total, mut count) = (0.0, 0usize);
    for chunk in windows.chunks(batch_size) {
        let flat: Vec<u32> = chunk.concat();
        let (inputs, targets) = inputs_and_targets::<B>(&flat, chunk.len(), device);
        let nll = model.token_nll(inputs, targets);
        count += nll.shape().num_elements();
        total += nll.sum().into_scalar().elem::<f64>();
    }
    total / count as f64
}
