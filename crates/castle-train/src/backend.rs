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

/// Runs `task` on `kind` without activation checkpointing. The GPU backends are burn's
/// `CubeBackend` without the `Fusion` wrapper of burn's `Cuda`/`Wgpu` aliases, so that the
/// attentions run castle's CubeCL kernels.
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
        BackendKind::Cuda => {
            task.run::<Autodiff<castle_model::kernels::cube::Cuda, C>>(Default::default())
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            wgpu_adapter()?;
            task.run::<Autodiff<castle_model::kernels::cube::Wgpu, C>>(Default::default())
        }
        #[allow(unreachable_patterns)]
        _ => anyhow::bail!(kind.not_compiled_in()),
    }
}

/// Checks that wgpu finds a GPU adapter (a Vulkan driver on Linux), which it otherwise reports
/// by panicking deep inside its first operation.
#[cfg(feature = "wgpu")]
fn wgpu_adapter() -> Result<()> {
    use burn::prelude::{Backend, Tensor};
    type B = castle_model::kernels::cube::Wgpu;
    let probe = std::panic::catch_unwind(|| {
        let x = Tensor::<B, 1>::zeros([1], &Default::default());
        B::sync(&x.device()).map(|_| ())
    });
    match probe {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => anyhow::bail!("backend.kind = \"wgpu\": the GPU failed: {e:?}"),
        Err(_) => anyhow::bail!(
            "backend.kind = \"wgpu\": wgpu found no GPU adapter; on Linux install a Vulkan driver \
             (`bash scripts/setup-vulkan.sh` installs Mesa's lavapipe, a software Vulkan GPU)"
        ),
    }
}
