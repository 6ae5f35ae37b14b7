//! The one place a config's `backend.kind` becomes a burn backend type.

use anyhow::Result;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::{Autodiff, Flex, NdArray};
use castle_model::TrainBackend;

use crate::config::{BackendConfig, BackendKind, Checkpointing};

/// Work that runs on whichever backend the config names.
pub trait OnBackend {
    type Output;
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs `task` on `kind` without activation checkpointing.
pub fn dispatch<T: OnBackend>(kind: BackendKind, task: T) -> Result<T::Output> {
    dispatch_with::<NoCheckpointing, T>(kind, task)
}

/// Runs a training `task` on `backend.kind` with `backend.checkpointing`'s strategy.
pub fn dispatch_training<T: OnBackend>(backend: &BackendConfig, task: T) -> Result<T::Output> {
    match backend.checkpointing {
        Checkpointing::None => dispatch_with::<NoCheckpointing, T>(backend.kind, task),
        Checkpointing::Balanced => dispatch_with::<BalancedCheckpointing, T>(backend.kind, task),
    }
}

fn dispatch_with<C: CheckpointStrategy, T: OnBackend>(
    kind: BackendKind,
    task: T,
) -> Result<T::Output> {
    match kind {
        BackendKind::Ndarray => task.run::<Autodiff<NdArray<f32>, C>>(Default::default()),
        BackendKind::Flex => task.run::<Autodiff<Flex, C>>(Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => task.run::<Autodiff<burn::backend::Cuda, C>>(Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => anyhow::bail!(kind.not_compiled_in()),
    }
}
