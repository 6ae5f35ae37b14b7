//! The one place a config's `backend.kind` becomes a burn backend type.

use anyhow::Result;
use burn::backend::{Autodiff, Flex, NdArray};
use castle_model::TrainBackend;

use crate::config::BackendKind;

/// Work that runs on whichever backend the config names.
pub trait OnBackend {
    type Output;
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Self::Output>;
}

pub fn dispatch<T: OnBackend>(kind: BackendKind, task: T) -> Result<T::Output> {
    match kind {
        BackendKind::Ndarray => task.run::<Autodiff<NdArray<f32>>>(Default::default()),
        BackendKind::Flex => task.run::<Autodiff<Flex>>(Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => task.run::<Autodiff<burn::backend::Cuda>>(Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => anyhow::bail!(kind.not_compiled_in()),
    }
}
