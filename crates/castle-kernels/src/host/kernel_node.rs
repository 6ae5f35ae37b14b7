//! A [`HostKernel`] on burn tensors: its forward pass on host copies of the inputs, and the
//! same as one node of the autodiff graph whose backward pass is the kernel's.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element, TensorPrimitive};

use super::attention::{HeadsShape, HostKernel};
use super::elem::Elem;
use super::host_array::{from_host, grads_from_host, to_host};
use crate::autodiff::{tracked, NodeState};
use crate::precision::to_dtype;

fn shape_of(dims: [usize; 4]) -> HeadsShape {
    HeadsShape {
        heads: dims[0] * dims[1],
        len: dims[2],
        d: dims[3],
    }
}

/// The forward kernel on any backend's tensors; also returns the host inputs and what the
/// backward pass needs.
pub(crate) fn host_forward<B: Backend, E: Elem + Element, K: HostKernel<N>, const N: usize>(
    kernel: K,
    inputs: [Tensor<B, 4>; N],
) -> (Tensor<B, 4>, [Vec<E>; N], K::Saved<E>) {
    let (dims, device, dtype) = (inputs[0].dims(), inputs[0].device(), inputs[0].dtype());
    let x = inputs.map(to_host::<B, E, 4>);
    let (out, saved) = kernel.forward(x.each_ref().map(|v| v.as_slice()), shape_of(dims));
    // The kernels compute in f32 whatever their tensors' float type (bf16 under
    // `backend.dtype = "bf16"`) and hand back the type they were given.
    (to_dtype(from_host(out, dims, &device), dtype), x, saved)
}

/// What a tracked kernel keeps: its host inputs and its own saved state.
#[derive(Debug)]
struct KernelState<K: HostKernel<N>, E: Elem, const N: usize> {
    kernel: K,
    inputs: [Vec<E>; N],
    saved: K::Saved<E>,
    dims: [usize; 4],
    /// The inputs' float types, which their gradients take.
    dtypes: [DType; N],
}

impl<B, K, E, const N: usize> NodeState<B> for KernelState<K, E, N>
where
    B: Backend,
    K: HostKernel<N>,
    E: Elem + Element,
{
    fn backward(&self, d_out: FloatTensor<B>) -> Vec<FloatTensor<B>> {
        let d_out = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(d_out));
        let device = d_out.device();
        let x = self.inputs.each_ref().map(|v| v.as_slice());
        let host_grads = self
            .kernel
            .backward(x, shape_of(self.dims), &self.saved, &to_host(d_out));
        grads_from_host::<B, E, 4, N>(host_grads, |_| self.dims, self.dtypes, &device)
    }
}

/// [`host_forward`] as one node of the autodiff graph.
pub(crate) fn tracked_kernel<B, C, E, K, const N: usize>(
    kernel: K,
    inputs: [Tensor<Autodiff<B, C>, 4>; N],
) -> Tensor<Autodiff<B, C>, 4>
where
    B: Backend,
    C: CheckpointStrategy,
    E: Elem + Element,
    K: HostKernel<N>,
{
    let dims = inputs[0].dims();
    let dtypes = inputs.each_ref().map(|x| x.dtype());
    tracked(inputs, |inner, _| {
        let (out, inputs, saved) = host_forward::<B, E, K, N>(kernel, inner);
        let state = KernelState {
            kernel,
            inputs,
            saved,
            dims,
            dtypes,
        };
        (out, state)
    })
}
