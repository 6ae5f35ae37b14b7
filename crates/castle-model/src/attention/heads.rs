//! From a layer's projection to per-head tensors and back, and the host-kernel path that does
//! both inside one fused op.

use burn::prelude::*;
use castle_kernels::host::heads::{Projected, Source};
use castle_kernels::host::HostKernel;
use castle_kernels::rope::RopeTables;
use castle_kernels::AttentionBackend;

/// `[batch, len, parts * heads * d]` -> `parts` tensors of `[batch, heads, len, d]`, in
/// projection order (strided views).
pub fn split_heads<B: Backend>(y: Tensor<B, 3>, parts: usize, heads: usize) -> Vec<Tensor<B, 4>> {
    let [b, l, width] = y.dims();
    let d = width / (parts * heads);
    let y = y.reshape([b, l, parts * heads, d]).swap_dims(1, 2);
    (0..parts)
        .map(|p| {
            y.clone()
                .slice([0..b, p * heads..(p + 1) * heads, 0..l, 0..d])
        })
        .collect()
}

/// `[batch, heads, len, d]` -> `[batch, len, heads * d]`.
pub fn merge_heads<B: Backend>(o: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, l, d] = o.dims();
    o.swap_dims(1, 2).reshape([b, l, h * d])
}

/// The host-kernel path (`B::HOST_KERNELS` only) from the projection
/// `y: [batch, len, parts * heads * d]` to the merged output `[batch, len, heads * d]`: `kernel`
/// on `sources` of `y` (RoPE from `rope`, positions `0..len`) as one fused op, with no strided
/// views ([`castle_kernels::host::heads`]).
pub fn host_attention<B: AttentionBackend, K: HostKernel<N>, const N: usize>(
    y: Tensor<B, 3>,
    kernel: K,
    sources: [Source; N],
    heads: usize,
    rope: &RopeTables<B>,
) -> Tensor<B, 3> {
    let [batch, len, width] = y.dims();
    let parts = sources.iter().map(|s| s.part + 1).max().unwrap_or(0);
    let d = width / (parts * heads);
    let op = Projected {
        kernel,
        sources,
        parts,
        batch,
        heads,
        d,
        rope: rope.rows(len, d).clone(),
    };
    B::host_op(op, [y.reshape([-1])]).reshape([batch, len, heads * d])
}
