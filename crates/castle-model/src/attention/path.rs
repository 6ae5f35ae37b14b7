//! [`AttentionPath`]: which exact form a full-sequence forward computes attention by.

/// How a full-sequence forward computes attention. All three are exact; tests compare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// burn tensor ops; CASTLE by Theorem 1's O(L^3) parallel form: the reference.
    Naive,
    /// burn tensor ops; CASTLE by the O(L^2 d) chunked form with this block size.
    Chunked { block: usize },
    /// The backend's attention kernel ([`castle_kernels::AttentionBackend`]) with this block size:
    /// the fused CPU kernels on `flex` and `ndarray` (fed straight from the layer's projection by
    /// [`super::heads::host_attention`] in a full forward); on CUDA, until its own kernels exist, the chunked
    /// tensor-op form. The training path.
    Kernel { block: usize },
}
