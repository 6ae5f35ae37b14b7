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

/// Runs `task` on `kind` without activation checkpointing, the GPU backends under burn's
/// `Fusion` wrapper (`castle_kernels::cube::FusedWgpu`, `FusedCuda`).
pub fn dispatch<T: OnBackend>(kind: BackendKind, task: T) -> Result<T::Output> {
    dispatch_with::<NoCheckpointing, T>(kind, true, task)
}

/// Runs a training `task` on `backend.kind` with `backend.checkpointing`'s strategy, under
/// fusion or not as `backend.fusion` says.
pub fn dispatch_training<T: OnBackend>(backend: &BackendConfig, task: T) -> Result<T::Output> {
    let (kind, fusion) = (backend.kind, backend.fusion);
    match backend.checkpointing {
        Checkpointing::None => dispatch_with::<NoCheckpointing, T>(kind, fusion, task),
        Checkpointing::Balanced => dispatch_with::<BalancedCheckpointing, T>(kind, fusion, task),
    }
}

/// `kind`'s backend under autodiff with checkpointing `C`. The GPU backends are burn's
/// `CubeBackend`, bare or under burn's `Fusion` wrapper: castle's own aliases, so that the
/// attentions run castle's CubeCL kernels.
fn dispatch_with<C: CheckpointStrategy, T: OnBackend>(
    kind: BackendKind,
    #[allow(unused_variables)] fusion: bool,
    task: T,
) -> Result<T::Output> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    use castle_kernels::cube;
    match kind {
        BackendKind::Ndarray => task.run::<Autodiff<NdArray<f32>, C>>(Default::default()),
        BackendKind::Flex => task.run::<Autodiff<Flex, C>>(Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda if fusion => task.run::<Autodiff<cube::FusedCuda, C>>(Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => task.run::<Autodiff<cube::Cuda, C>>(Default::default()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            wgpu_adapter()?;
            if fusion {
                task.run::<Autodiff<cube::FusedWgpu, C>>(Default::default())
            } else {
                task.run::<Autodiff<cube::Wgpu, C>>(Default::default())
            }
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
    type B = castle_kernels::cube::Wgpu;
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
