//! The small layers of the decoder: RMSNorm and the SwiGLU MLP.

use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

use castle_kernels::KernelBackend;

/// A bias-free linear layer with the GPT-2 initialisation N(0, std).
pub fn linear<B: Backend>(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// RMSNorm computed in the backend's own float type (burn's `RmsNorm` rounds through f32, which
/// would spoil the float64 reference tests).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub gamma: burn::module::Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(d_model: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            gamma: burn::module::Param::from_tensor(Tensor::ones([d_model], device)),
            eps,
        }
    }
}

impl<B: KernelBackend> RmsNorm<B> {
    /// `x / sqrt(mean(x^2) + eps) (.) gamma` over the last dimension.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        B::rms_norm(x, self.gamma.val(), self.eps)
    }
}

/// SwiGLU MLP: `W_down (SiLU(x W_gate) * x W_up)`.
#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    pub gate: Linear<B>,
    pub up: Linear<B>,
    pub down: Linear<B>,
}

impl<B: Backend> SwiGlu<B> {
    pub fn new(d_model: usize, hidden: usize, down_std: f64, device: &B::Device) -> Self {
        Self {
            gate: linear(d_model, hidden, 0.02, device),
            up: linear(d_model, hidden, 0.02, device),
            down: linear(hidden, d_model, down_std, device),
        }
    }
}

impl<B: KernelBackend> SwiGlu<B> {
    /// `W_down (SiLU(x W_gate) (.) x W_up)`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = B::swiglu_gate(B::project(&self.gate, x.clone()), B::project(&self.up, x));
        B::project(&self.down, h)
    }
}
