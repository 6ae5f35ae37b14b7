//! Mixed precision (`backend.dtype = "bf16"`): parameters stay f32; the model (`castle-model`'s
//! `CastleLm`) casts the embedding's output to its compute type, every projection casts its
//! weight to its input's type (burn's autodiff casts the gradient back to f32 for AdamW), the
//! fused CPU kernels compute in f32 on host and return their inputs' type, the tensor-op attention
//! forms compute in at least f32 (softmax statistics and the lookahead prefix sums), and the
//! logits return to f32 for the loss. With no compute type set every helper here is the
//! identity: f32 runs are unchanged.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::module::linear;
use burn::tensor::DType;

/// `x` in `dtype`; no cast (and no autodiff node) when it already is.
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

/// `x` in at least f32: 16-bit floats are widened, f32 and f64 stay.
pub fn widen<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match x.dtype() {
        DType::BF16 | DType::F16 => x.cast(DType::F32),
        _ => x,
    }
}

/// `layer`'s projection of `x` computed in `x`'s float type (the weight cast to it).
pub fn project<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dtype = x.dtype();
    let weight = to_dtype(layer.weight.val(), dtype);
    linear(
        x,
        weight,
        layer.bias.as_ref().map(|b| to_dtype(b.val(), dtype)),
    )
}
