//! [`HostArray`]: a tensor's values as the fused CPU kernels read them, and the way back.
//!
//! On `Flex` a contiguous tensor of the kernel's float type already lives in host memory: the
//! kernels read its buffer in place (shared, as burn's own views share it), with no copy on
//! the calling thread while the workers wait. Other backends, other float types (bf16) and
//! strided views are copied (`into_data`), as before.

use std::fmt;
use std::ops::Deref;

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element};
use burn_flex::FlexTensor;

use super::elem::Elem;
use crate::precision::to_dtype;

/// A float tensor's values in host memory, packed, in the kernels' element type `E`.
pub enum HostArray<E> {
    /// A host copy.
    Owned(Vec<E>),
    /// A `Flex` tensor's own buffer, known to be contiguous and of type `E`.
    Flex(FlexTensor),
}

impl<E: Elem + Element> HostArray<E> {
    /// `x` read in place when it is contiguous and of type `E`, copied otherwise.
    pub fn of_flex(x: FlexTensor) -> Self {
        match x.as_slice::<E>() {
            Some(_) => Self::Flex(x),
            None => Self::Owned(to_host(Tensor::<burn::backend::Flex, 1>::from_primitive(
                burn::tensor::TensorPrimitive::Float(x),
            ))),
        }
    }
}

impl<E: Elem + Element> Deref for HostArray<E> {
    type Target = [E];

    fn deref(&self) -> &[E] {
        match self {
            Self::Owned(v) => v,
            Self::Flex(x) => x.as_slice().expect("checked contiguous and of type E"),
        }
    }
}

impl<E> Default for HostArray<E> {
    fn default() -> Self {
        Self::Owned(Vec::new())
    }
}

impl<E> fmt::Debug for HostArray<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Owned(v) => write!(f, "HostArray::Owned({} values)", v.len()),
            Self::Flex(x) => write!(f, "HostArray::Flex({:?})", x.layout().shape()),
        }
    }
}

/// How a backend hands a flat tensor to the kernels: `HostArray::of_flex` on `Flex` (in
/// place), [`read_copy`] elsewhere (`crate::KernelBackend::host_array`).
pub type ReadHost<B, E> = fn(Tensor<B, 1>) -> HostArray<E>;

/// `x` as a host copy: how every backend but `Flex` hands tensors to the kernels.
pub fn read_copy<B: Backend, E: Elem + Element>(x: Tensor<B, 1>) -> HostArray<E> {
    HostArray::Owned(to_host(x))
}

/// A host copy of `x` in the kernels' element type `E` (converted from bf16 if need be).
pub fn to_host<B: Backend, E: Elem + Element, const D: usize>(x: Tensor<B, D>) -> Vec<E> {
    x.into_data()
        .convert::<E>()
        .into_vec()
        .expect("converted to the kernel's element type")
}

/// A kernel's output `x` as a tensor of shape `dims` (no copy on the CPU backends).
pub(crate) fn from_host<B: Backend, E: Elem + Element, const D: usize>(
    x: Vec<E>,
    dims: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(x, dims), device)
}

/// A kernel's host gradients as tensors, each of the shape `shape` gives it, in its input's
/// float type.
pub(crate) fn grads_from_host<B: Backend, E: Elem + Element, const D: usize, const N: usize>(
    grads: [Vec<E>; N],
    shape: impl Fn(&[E]) -> [usize; D],
    dtypes: [DType; N],
    device: &B::Device,
) -> Vec<FloatTensor<B>> {
    grads
        .into_iter()
        .zip(dtypes)
        .map(|(grad, dtype)| {
            let dims = shape(&grad);
            let grad = to_dtype(from_host::<B, E, D>(grad, dims, device), dtype);
            grad.into_primitive().tensor()
        })
        .collect()
}
