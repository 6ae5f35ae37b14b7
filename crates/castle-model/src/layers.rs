//! The small layers of the decoder: RMSNorm and the SwiGLU MLP.

use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

use castle_kernels::host::linear::fused_project;
use castle_kernels::host::rmsnorm::RmsNormRows;
use castle_kernels::host::swiglu::SwiGluGate;
use castle_kernels::precision::{project, to_dtype};
use castle_kernels::reference::silu;
use castle_kernels::AttentionBackend;

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

    /// The tensor-op form: the reference, and what GPU backends run.
    pub fn forward_reference(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt();
        let gamma = to_dtype(self.gamma.val(), x.dtype());
        x / rms * gamma.unsqueeze()
    }
}

impl<B: AttentionBackend> RmsNorm<B> {
    /// `x / sqrt(mean(x^2) + eps) (.) gamma` over the last dimension; the fused kernel on CPU.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if !B::HOST_KERNELS {
            return self.forward_reference(x);
        }
        let dims = x.dims();
        let op = RmsNormRows {
            d: dims[2],
            eps: self.eps,
        };
        B::host_op(op, [x.reshape([-1]), self.gamma.val()]).reshape(dims)
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

    /// The tensor-op form: the reference, and what GPU backends run.
    pub fn forward_reference(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = silu(project(&self.gate, x.clone())) * project(&self.up, x);
        project(&self.down, h)
    }
}

impl<B: AttentionBackend> SwiGlu<B> {
    /// `W_down (SiLU(x W_gate) (.) x W_up)`, the gate a fused kernel on CPU.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if !B::HOST_KERNELS {
            return self.forward_reference(x);
        }
        let g = fused_project(&self.gate, x.clone());
        let dims = g.dims();
        let u = fused_project(&self.up, x);
        let h = B::host_op(SwiGluGate, [g.reshape([-1]), u.reshape([-1])]);
        fused_project(&self.down, h.reshape(dims))
    }
}
